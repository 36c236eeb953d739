"""Benchmark of the native core (authsvc.otp) against baselines measured in the same run.

Run with `make bench`. Each case times the native call and its pure-Python (or pyotp) baseline
in the same process, repeats both several times, and prints the median time per operation and
the ratio baseline / native. This is a benchmark, not a test: nothing here passes or fails.
Targets (issue #2): verify_totp >= 25x pyotp, hotp >= 15x pyotp, batch codes >= 20x a
secrets.randbelow loop, check >= 5x and check_many >= 20x a pure-Python GCRA.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import os
import platform
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyotp

from authsvc import otp

SECRET = bytes(range(1, 21))
SECRET_B32 = base64.b32encode(SECRET).decode("ascii")
AT = 1_700_000_000.0


class PyGcra:
    """The baseline limiter: the same GCRA in pure Python (dict + lock, no eviction)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.interval = 1.0 / rate_per_s
        self.limit = burst * self.interval
        self.tat: dict[str, float] = {}
        self.lock = threading.Lock()

    def check(self, key: str, cost: int = 1, now: float | None = None) -> tuple[bool, float, int]:
        if now is None:
            now = time.monotonic()
        with self.lock:
            tat = max(self.tat.get(key, now), now)
            new_tat = tat + cost * self.interval
            allow_at = new_tat - self.limit
            if allow_at <= now:
                self.tat[key] = new_tat
                return True, 0.0, int((now + self.limit - new_tat) / self.interval)
            return False, allow_at - now, int((now + self.limit - tat) / self.interval)

    def check_many(self, keys: list[str], now: float | None = None) -> list[bool]:
        return [self.check(key, 1, now)[0] for key in keys]


@dataclass
class Case:
    name: str
    native: Callable[[], object]
    baseline: Callable[[], object]
    ops: int  # operations per call of native / baseline
    target: float


def per_op_ns(fn: Callable[[], object], ops: int, min_time: float) -> float:
    """Nanoseconds per operation: calls `fn` in a loop for at least `min_time` seconds."""
    calls = 0
    start = time.perf_counter_ns()
    deadline = start + int(min_time * 1e9)
    now = start
    while now < deadline or calls == 0:
        fn()
        calls += 1
        now = time.perf_counter_ns()
    return (now - start) / (calls * ops)


def make_cases() -> list[Case]:
    cases: list[Case] = []

    batch = 100_000

    def codes_native() -> object:
        return otp.generate_codes(batch, 6)

    def codes_baseline() -> object:
        return [f"{secrets.randbelow(1_000_000):06d}" for _ in range(batch)]

    cases.append(
        Case(
            "generate_codes(100k) vs secrets.randbelow loop",
            codes_native,
            codes_baseline,
            batch,
            20.0,
        )
    )

    loop = 2_000
    counters = list(range(1_000_000, 1_000_000 + loop))
    py_hotp = pyotp.HOTP(SECRET_B32)

    def hotp_native() -> object:
        h = otp.hotp
        return [h(SECRET, c) for c in counters]

    def hotp_baseline() -> object:
        at = py_hotp.at
        return [at(c) for c in counters]

    cases.append(Case("hotp vs pyotp.HOTP.at", hotp_native, hotp_baseline, loop, 15.0))

    # Worst case: a wrong code, so every step of the window is computed by both.
    py_totp = pyotp.TOTP(SECRET_B32)
    wrong = "000000" if py_totp.at(AT) != "000000" else "000001"
    times = [AT + i for i in range(loop)]

    def verify_native() -> object:
        v = otp.verify_totp
        return [v(SECRET, wrong, t, window=1) for t in times]

    def verify_baseline() -> object:
        v = py_totp.verify
        return [v(wrong, for_time=t, valid_window=1) for t in times]

    cases.append(
        Case(
            "verify_totp(window=1, wrong code) vs pyotp.TOTP.verify",
            verify_native,
            verify_baseline,
            loop,
            25.0,
        )
    )

    key = secrets.token_bytes(32)
    hasher = otp.CodeHasher(key)
    context = b"challenge-0123456789"
    stored = hasher.digest("123456", context)
    prefix = len(context).to_bytes(8, "big") + context

    def hasher_native() -> object:
        v = hasher.verify
        return [v("123456", context, stored) for _ in range(loop)]

    def hasher_baseline() -> object:
        return [
            hmac.compare_digest(hmac.new(key, prefix + b"123456", hashlib.sha256).digest(), stored)
            for _ in range(loop)
        ]

    cases.append(
        Case(
            "CodeHasher.verify vs hmac.new + compare_digest",
            hasher_native,
            hasher_baseline,
            loop,
            0.0,
        )
    )

    keys = [f"user-{i}@example.com" for i in range(10_000)]
    native_limiter = otp.RateLimiter(1e6, 10)
    py_limiter = PyGcra(1e6, 10)
    clock = {"t": 0.0}

    # A caller reads the decision and drops it: so do both loops.
    check_keys = keys[:loop]

    def check_native() -> object:
        clock["t"] += 1.0
        now = clock["t"]
        c = native_limiter.check
        for k in check_keys:
            c(k, 1, now)
        return None

    def check_baseline() -> object:
        clock["t"] += 1.0
        now = clock["t"]
        c = py_limiter.check
        for k in check_keys:
            c(k, 1, now)
        return None

    cases.append(
        Case("RateLimiter.check vs pure-Python GCRA", check_native, check_baseline, loop, 5.0)
    )

    def many_native() -> object:
        clock["t"] += 1.0
        return native_limiter.check_many(keys, clock["t"])

    def many_baseline() -> object:
        clock["t"] += 1.0
        return py_limiter.check_many(keys, clock["t"])

    cases.append(
        Case(
            "RateLimiter.check_many(10k) vs pure-Python GCRA",
            many_native,
            many_baseline,
            len(keys),
            20.0,
        )
    )
    return cases


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="repeats per case (median)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    args = parser.parse_args()

    print(f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, python={platform.python_version()}")
    print(f"repeats={args.repeats}, min_time={args.min_time}s; medians per operation\n")
    header = f"{'case':58} {'native':>10} {'baseline':>10} {'ratio':>8} {'target':>7}"
    print(header)
    print("-" * len(header))
    for case in make_cases():
        native_runs: list[float] = []
        baseline_runs: list[float] = []
        ratios: list[float] = []
        for _ in range(args.repeats):
            # Interleave native and baseline so machine noise hits both alike.
            n = per_op_ns(case.native, case.ops, args.min_time)
            b = per_op_ns(case.baseline, case.ops, args.min_time)
            native_runs.append(n)
            baseline_runs.append(b)
            ratios.append(b / n)
        n_med = statistics.median(native_runs)
        b_med = statistics.median(baseline_runs)
        r_med = statistics.median(ratios)
        target = f">={case.target:g}x" if case.target else "-"
        mark = "" if not case.target else ("  ok" if r_med >= case.target else "  BELOW TARGET")
        print(
            f"{case.name:58} {n_med:8.0f}ns {b_med:8.0f}ns {r_med:7.1f}x {target:>7}{mark}",
            flush=True,
        )
    first_vs_last_wrong_digit(args.repeats, args.min_time)


def first_vs_last_wrong_digit(repeats: int, min_time: float) -> None:
    """CodeHasher.verify with the first or the last digit wrong (reported; the pass/fail
    property, hash then compare whole digests, is tests/native/test_otp_position.py)."""
    hasher = otp.CodeHasher(b"k" * 32)
    digest = hasher.digest("123456", b"challenge")
    first: list[float] = []
    last: list[float] = []
    for _ in range(repeats):  # interleaved
        first.append(per_op_ns(lambda: hasher.verify("923456", b"challenge", digest), 1, min_time))
        last.append(per_op_ns(lambda: hasher.verify("123459", b"challenge", digest), 1, min_time))
    a, b = statistics.median(first), statistics.median(last)
    print(
        f"{'CodeHasher.verify, first vs last digit wrong':58} {a:8.0f}ns {b:8.0f}ns "
        f"{abs(a - b) / min(a, b):7.1%}  (gap, reported)"
    )


if __name__ == "__main__":
    main()

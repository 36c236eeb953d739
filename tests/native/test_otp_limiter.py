"""RateLimiter (GCRA): semantics with a driven clock, eviction, and use from many threads."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from authsvc import otp
from authsvc.errors import OtpInputError


def test_burst_then_refill() -> None:
    limiter = otp.RateLimiter(1.0, 3)
    decisions = [limiter.check("alice", now=100.0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert [d.retry_after for d in decisions] == [0.0, 0.0, 0.0, 1.0]
    # 0.25 s later: 0.75 s still to wait, nothing recorded by the denials.
    denied = limiter.check("alice", now=100.25)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.75)
    # One emission interval after the burst: exactly one more.
    assert limiter.check("alice", now=101.0).allowed
    assert not limiter.check("alice", now=101.0).allowed
    # Other keys are independent.
    assert limiter.check("bob", now=101.0).remaining == 2
    # Long idle: a full burst again.
    again = limiter.check("alice", now=200.0)
    assert again.allowed and again.remaining == 2


def test_steady_rate_long_run() -> None:
    # Over T seconds a key gets burst + rate * T requests, whatever the arrival pattern.
    limiter = otp.RateLimiter(5.0, 7)
    allowed = sum(limiter.check("k", now=i / 100).allowed for i in range(1001))
    assert allowed == 7 + 50


def test_cost() -> None:
    limiter = otp.RateLimiter(2.0, 4)  # one unit per 0.5 s
    first = limiter.check("k", 3, now=0.0)
    assert first.allowed and first.remaining == 1
    second = limiter.check("k", cost=2, now=0.0)
    assert not second.allowed
    assert second.remaining == 1
    assert second.retry_after == pytest.approx(0.5)
    assert limiter.check("k", now=0.0).allowed
    # A cost above the burst can never be allowed: retry_after is infinite.
    never = otp.RateLimiter(2.0, 4).check("x", cost=5, now=0.0)
    assert not never.allowed
    assert math.isinf(never.retry_after)
    assert never.remaining == 4


def test_decision_repr_and_readonly() -> None:
    d = otp.RateLimiter(1.0, 2).check("k", now=0.0)
    assert repr(d) == "Decision(allowed=True, retry_after=0.0, remaining=1)"
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]


def test_reset_and_len() -> None:
    limiter = otp.RateLimiter(1.0, 1)
    assert limiter.check("a", now=0.0).allowed
    assert limiter.check("b", now=0.0).allowed
    assert len(limiter) == limiter.len() == 2
    assert not limiter.check("a", now=0.0).allowed
    limiter.reset("a")
    limiter.reset("never-seen")
    assert limiter.len() == 1
    assert limiter.check("a", now=0.0).allowed


def test_eviction_prefers_idle_keys_then_oldest() -> None:
    limiter = otp.RateLimiter(1.0, 5, max_keys=3)
    limiter.check("old", 1, now=0.0)  # TAT 1 s
    limiter.check("busy", 5, now=0.0)  # TAT 5 s
    limiter.check("mid", 2, now=0.0)  # TAT 2 s
    assert limiter.len() == 3
    # At 1.5 s "old" is idle: it is the one dropped; "busy" keeps its state.
    assert limiter.check("new", now=1.5).allowed
    assert limiter.len() == 3
    assert limiter.check("busy", now=1.5).allowed  # TAT 5 -> 6, limit 1.5 + 5
    assert not limiter.check("busy", now=1.5).allowed
    # At 1.6 s nothing is idle: the oldest TAT ("mid", 2 s) goes, "busy" (6 s) stays limited.
    assert limiter.check("newer", now=1.6).allowed
    assert limiter.len() == 3
    assert not limiter.check("busy", now=1.6).allowed
    # "mid" lost its state (a fresh burst), which shows it was evicted.
    assert limiter.check("mid", now=1.6).remaining == 4


def test_memory_bounded_under_key_flood() -> None:
    limiter = otp.RateLimiter(1.0, 10, max_keys=1000)
    for i in range(20_000):
        limiter.check(f"k{i}", now=0.0)
        assert limiter.len() <= 1000
    # The limiter still works for a flooded key.
    assert limiter.check("victim", now=0.0).allowed


def test_check_many_equals_sequential_checks() -> None:
    keys = [f"k{i % 37}" for i in range(3000)]  # above the GIL-release threshold
    batch = otp.RateLimiter(1.0, 5)
    single = otp.RateLimiter(1.0, 5)
    results = batch.check_many(keys, now=0.0)
    assert results == [single.check(k, now=0.0).allowed for k in keys]
    assert sum(results) == 37 * 5
    small = otp.RateLimiter(1.0, 2)
    assert small.check_many(["a", "a", "a", "b"], now=0.0) == [True, True, False, True]
    assert small.check_many([], now=0.0) == []
    assert small.check_many(iter(["c"]), now=0.0) == [True]
    with pytest.raises(TypeError):
        small.check_many(["a", 1], now=0.0)  # type: ignore[list-item]


def test_monotonic_clock() -> None:
    # One request per 1000 s: a stalled test machine cannot refill it between the calls.
    limiter = otp.RateLimiter(0.001, 2)
    assert limiter.check("k").allowed
    assert limiter.check("k").allowed
    denied = limiter.check("k")
    assert not denied.allowed
    assert 990.0 < denied.retry_after <= 1000.0


def test_threads_share_one_budget() -> None:
    limiter = otp.RateLimiter(1.0, 100)
    start = threading.Barrier(8)

    def hammer(_: int) -> int:
        start.wait()
        return sum(limiter.check("hot", now=0.0).allowed for _ in range(500))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(hammer, range(8))) == 100


def test_threads_with_eviction_and_batches() -> None:
    limiter = otp.RateLimiter(1.0, 3, max_keys=500)
    start = threading.Barrier(6)

    def worker(n: int) -> int:
        start.wait()
        allowed = 0
        for round_ in range(20):
            keys = [f"t{n}-{round_}-{i}" for i in range(2000)]
            allowed += sum(limiter.check_many(keys, now=float(round_)))
            allowed += limiter.check(f"single-{n}-{round_}", now=float(round_)).allowed
            assert limiter.len() <= 500
        return allowed

    with ThreadPoolExecutor(6) as pool:
        # Every key is new, so every request is allowed: eviction never refuses a newcomer.
        assert sum(pool.map(worker, range(6))) == 6 * 20 * 2001
    assert limiter.len() <= 500


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"),
    [(0.0, 1, 10), (-1.0, 1, 10), (math.nan, 1, 10), (math.inf, 1, 10), (1.0, 0, 10), (1.0, 1, 0)],
)
def test_bad_configuration(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(OtpInputError):
        otp.RateLimiter(rate, burst, max_keys=max_keys)


@pytest.mark.parametrize("cost", [0, -1, -(2**40)])
def test_cost_below_one(cost: int) -> None:
    with pytest.raises(OtpInputError, match="cost"):
        otp.RateLimiter(1.0, 1).check("k", cost, now=0.0)


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, 1e12])
def test_bad_now(now: float) -> None:
    with pytest.raises(OtpInputError, match="now"):
        otp.RateLimiter(1.0, 1).check("k", now=now)

"""A code's comparison takes the same time wherever its first wrong digit is.

`CodeHasher.verify` hashes the candidate (HMAC-SHA-256) and compares digests in constant time,
so the position of the first wrong digit cannot show. Measured as a statistical property:
batches of calls with the wrong digit first and last, interleaved, medians compared; once
more before failing (a shared machine is noisy).
"""

from __future__ import annotations

import statistics
import time

from authsvc.otp import CodeHasher

BATCHES = 60
CALLS = 400
BOUND = 0.10


def _batch(hasher: CodeHasher, code: str, digest: bytes) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        hasher.verify(code, b"challenge", digest)
    return time.perf_counter() - started


def test_first_and_last_wrong_digit_take_the_same_time() -> None:
    hasher = CodeHasher(b"k" * 32)
    digest = hasher.digest("123456", b"challenge")
    results = []
    for _ in range(2):
        first: list[float] = []
        last: list[float] = []
        for index in range(BATCHES):
            order = [("923456", first), ("123459", last)]
            for code, sink in order if index % 2 else reversed(order):
                sink.append(_batch(hasher, code, digest))
        a, b = statistics.median(first), statistics.median(last)
        results.append((a, b))
        if abs(a - b) / min(a, b) <= BOUND:
            return
    raise AssertionError(f"medians differ by more than {BOUND:.0%}: {results}")

"""The in-process backend: one Rust GCRA `RateLimiter` (authsvc.otp) per limit.

Right for one node (or as a per-replica pre-filter): with `serve --workers N` each process has
its own state, so a limit holds per process.
"""

from __future__ import annotations

from collections.abc import Sequence

from authsvc.otp import RateLimiter
from authsvc.policies.ratelimit import ALLOWED, Limit, Verdict

MAX_KEYS_PER_LIMIT = 1_000_000


class MemoryBackend:
    name = "memory"

    def __init__(self, *, max_keys: int = MAX_KEYS_PER_LIMIT) -> None:
        self._limiters: dict[tuple[int, int], RateLimiter] = {}
        self._max_keys = max_keys
        # Times go to Rust as seconds since this base (small numbers: exact to the microsecond).
        self._base_us: int | None = None

    def _limiter(self, limit: Limit) -> RateLimiter:
        shape = (limit.burst, limit.interval_us)
        limiter = self._limiters.get(shape)
        if limiter is None:
            limiter = RateLimiter(1e6 / limit.interval_us, limit.burst, max_keys=self._max_keys)
            self._limiters[shape] = limiter
        return limiter

    def _seconds(self, now_us: int) -> float:
        if self._base_us is None:
            self._base_us = now_us - 86400 * 1_000_000
        return (now_us - self._base_us) / 1e6

    def consume_now(self, checks: Sequence[tuple[Limit, str]], now_us: int) -> Verdict:
        now = self._seconds(now_us)
        for limit, key in checks:
            decision = self._limiter(limit).check(key, 1, now)
            if not decision.allowed:
                return Verdict(False, decision.retry_after, limit)
        return ALLOWED

    async def consume(
        self, checks: Sequence[tuple[Limit, str]], now_us: int, *, fail_closed: bool = False
    ) -> Verdict:
        return self.consume_now(checks, now_us)

    async def reset(self, limit: Limit, key: str) -> None:
        self._limiter(limit).reset(key)

    async def healthy(self) -> bool:
        return True

    async def connect(self) -> bool:
        return True  # nothing to reach

    async def close(self) -> None:
        return None

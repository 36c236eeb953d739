"""A Redis Cluster primary killed (SIGKILL) under the rate limiter: while its replica is not yet
promoted, sends fail closed and the other limits of its slots fall back to the in-process
limiter, exactly as with one unreachable Redis; then the client finds the promoted replica by
itself and the limits spent before the fault still hold there.
"""

from __future__ import annotations

import time
import uuid

import pytest
from topology.redis_cluster import RedisClusterNodes

from authsvc.errors import LimiterUnavailable
from authsvc.policies.memory import MemoryBackend
from authsvc.policies.ratelimit import Limit
from authsvc.policies.redis_backend import RedisBackend

pytestmark = pytest.mark.redis

T0 = 1_780_000_000_000_000
S = 1_000_000
SEND = Limit("send.test", "phone_number", burst=3, interval_us=3600 * S)
FAILOVER_S = 30.0  # polled, never slept: node timeout 1 s, then the replica's election


async def test_primary_killed_sends_fail_closed_then_the_replica_takes_over(
    redis_cluster: RedisClusterNodes,
) -> None:
    prefix = f"authsvc-test:{uuid.uuid4().hex}:"
    backend = RedisBackend(
        redis_cluster.url, prefix=prefix, timeout_s=0.5, fallback=MemoryBackend(), cluster=True
    )
    try:
        for _ in range(3):
            assert (await backend.consume([(SEND, "n")], T0, fail_closed=True)).allowed
        assert not (await backend.consume([(SEND, "n")], T0, fail_closed=True)).allowed
        primary = redis_cluster.primary_of(f"{prefix}{{send}}send.test:n")
        deadline = time.monotonic() + FAILOVER_S
        while not redis_cluster.replicated(primary):  # replication is asynchronous
            assert time.monotonic() < deadline
            await _tick()

        redis_cluster.kill(primary)

        with pytest.raises(LimiterUnavailable):
            await backend.consume([(SEND, "n")], T0, fail_closed=True)
        assert not backend.available
        assert not await backend.healthy()  # "authsvc.sends" NOT_SERVING
        # Not a send: the in-process limiter decides meanwhile (it knows nothing of Redis's
        # spends, as with one Redis down), and still limits.
        for _ in range(3):
            assert (await backend.consume([(SEND, "other")], T0)).allowed
        assert not (await backend.consume([(SEND, "other")], T0)).allowed

        failed_over = False
        while time.monotonic() < deadline:
            if await backend.healthy():
                failed_over = True
                break
            await _tick()
        assert failed_over, "the replica was not promoted, or the client did not find it"
        assert backend.available
        promoted = redis_cluster.primary_of(f"{prefix}{{send}}send.test:n")
        assert promoted != primary
        # What was spent before the fault holds on the promoted replica...
        refused = await backend.consume([(SEND, "n")], T0, fail_closed=True)
        assert not refused.allowed and refused.limit is SEND
        # ...and sends are decided in Redis again.
        assert (await backend.consume([(SEND, "fresh")], T0, fail_closed=True)).allowed
    finally:
        await backend.close()


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.05)  # a polling step, not a wait on wall time

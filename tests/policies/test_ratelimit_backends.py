"""One conformance suite for both rate-limit backends: the Rust limiter (memory) and the Lua
script (Redis) give the same answers, to the microsecond, for the same inputs.

The Redis cases need a real server (AUTHSVC_TEST_REDIS_URL, default the local one); they skip
with the reason shown when none answers, except under CI=true, where they fail.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topology.redis_cluster import RedisClusterNodes

from authsvc.config import Rate
from authsvc.errors import LimiterUnavailable
from authsvc.policies.memory import MemoryBackend
from authsvc.policies.ratelimit import Backend, Limit
from authsvc.policies.redis_backend import RedisBackend

T0 = 1_780_000_000_000_000  # microseconds since the epoch (2026)
S = 1_000_000
FAST = Limit("t.fast", "ip", burst=3, interval_us=2 * S)
SLOW = Limit("t.slow", "global", burst=2, interval_us=10 * S)


def redis_backend(url: str, *, cluster: bool = False) -> RedisBackend:
    return RedisBackend(
        url,
        prefix=f"authsvc-test:{uuid.uuid4().hex}:",
        timeout_s=2,
        fallback=MemoryBackend(),
        cluster=cluster,
    )


def shared_backend(request: pytest.FixtureRequest, kind: str) -> RedisBackend:
    """A Redis backend on one server ("redis") or on the module's Redis Cluster."""
    if kind == "redis-cluster":
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        return redis_backend(nodes.url, cluster=True)
    return redis_backend(request.getfixturevalue("redis_url"))


SHARED = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", marks=pytest.mark.redis),
]


@pytest.fixture(params=["memory", *SHARED])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    made = shared_backend(request, request.param)
    yield made
    await made.close()


async def test_burst_then_one_per_interval(backend: Backend) -> None:
    for _ in range(3):
        assert (await backend.consume([(FAST, "a")], T0)).allowed
    refused = await backend.consume([(FAST, "a")], T0)
    assert not refused.allowed and refused.limit is FAST
    assert refused.retry_after == pytest.approx(2.0)
    assert not (await backend.consume([(FAST, "a")], T0 + 2 * S - 1)).allowed
    assert (await backend.consume([(FAST, "a")], T0 + 2 * S)).allowed
    assert (await backend.consume([(FAST, "b")], T0)).allowed  # keys are independent


async def test_first_refusal_stops_the_decision(backend: Backend) -> None:
    """A refusal by an earlier limit spends nothing from the later ones (the global budget)."""
    for _ in range(3):
        assert (await backend.consume([(FAST, "ip")], T0)).allowed
    for _ in range(5):
        refused = await backend.consume([(FAST, "ip"), (SLOW, "all")], T0)
        assert not refused.allowed and refused.limit is FAST
    assert (await backend.consume([(FAST, "ip2"), (SLOW, "all")], T0)).allowed
    assert (await backend.consume([(FAST, "ip3"), (SLOW, "all")], T0)).allowed
    refused = await backend.consume([(FAST, "ip4"), (SLOW, "all")], T0)
    assert not refused.allowed and refused.limit is SLOW
    assert refused.retry_after == pytest.approx(10.0)


async def test_reset_forgets_a_key(backend: Backend) -> None:
    for _ in range(3):
        await backend.consume([(FAST, "fast.k")], T0)
    await backend.reset(FAST, "fast.k")
    assert (await backend.consume([(FAST, "fast.k")], T0)).allowed


# ---- differential: random traffic, identical answers ---------------------------------------

CAP = Limit.cap("t.cap", "phone_number", 10, 3600)
RATE = Limit.rate("t.rate", "ip", Rate(count=5, period_s=60))
TRAFFIC = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=900 * S),  # microseconds since the previous request
        st.sampled_from(["k1", "k2"]),
        st.sampled_from([(CAP,), (RATE,), (RATE, CAP)]),
    ),
    min_size=1,
    max_size=60,
)


@pytest.mark.parametrize("kind", SHARED)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(traffic=TRAFFIC)
async def test_memory_and_redis_agree(
    request: pytest.FixtureRequest, kind: str, traffic: list[tuple[int, str, tuple[Limit, ...]]]
) -> None:
    memory, redis = MemoryBackend(), shared_backend(request, kind)
    try:
        now = T0
        for gap, key, limits in traffic:
            now += gap
            checks = [(limit, f"{limit.name}:{key}") for limit in limits]
            expected = await memory.consume(checks, now)
            got = await redis.consume(checks, now)
            assert (got.allowed, got.limit) == (expected.allowed, expected.limit)
            assert got.retry_after == pytest.approx(expected.retry_after, abs=1e-6)
    finally:
        await redis.close()


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(min_value=0, max_value=1200 * S), min_size=1, max_size=80))
def test_a_cap_never_lets_more_than_its_count_through_in_any_window(gaps: list[int]) -> None:
    """Per number: at most 10 sends in any hour (closed interval), 20 in any day."""
    memory = MemoryBackend()
    hour = Limit.cap("h", "phone_number", 10, 3600)
    day = Limit.cap("d", "phone_number", 20, 86400)
    now, passed = T0, []
    for gap in gaps:
        now += gap
        if memory.consume_now([(hour, "n"), (day, "n")], now).allowed:
            passed.append(now)
    for index, start in enumerate(passed):
        in_hour = [t for t in passed[index:] if t <= start + 3600 * S]
        in_day = [t for t in passed[index:] if t <= start + 86400 * S]
        assert len(in_hour) <= 10 and len(in_day) <= 20


# ---- Redis unreachable -----------------------------------------------------------------------


async def test_unreachable_redis_fails_closed_for_sends_and_falls_back_otherwise() -> None:
    backend = RedisBackend(
        "redis://127.0.0.1:1/0", prefix="x:", timeout_s=0.2, fallback=MemoryBackend()
    )
    try:
        with pytest.raises(LimiterUnavailable):
            await backend.consume([(FAST, "a")], T0, fail_closed=True)
        assert not backend.available
        assert not await backend.healthy()
        for _ in range(3):  # the in-process fallback still limits
            assert (await backend.consume([(FAST, "a")], T0)).allowed
        assert not (await backend.consume([(FAST, "a")], T0)).allowed
    finally:
        await backend.close()

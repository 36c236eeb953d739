"""The service on the Redis backend: limits shared through Redis, and what happens when Redis
cannot be reached (sends fail closed, health says so, logins go on)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import CLIENT, PASSWORD, aio_channel, failure_of, seed_account
from topology.redis_cluster import RedisClusterNodes, redis_cli

from authsvc.clock import FrozenClock
from authsvc.config import Rate, RateLimitBackend, Settings
from authsvc.policies.redis_backend import RedisBackend
from authsvc.server import SENDS_HEALTH, Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

pytestmark = pytest.mark.redis


async def _server(
    settings: Settings, clock: FrozenClock, url: str, backend: str = "redis"
) -> Server:
    limits = settings.rate_limits.model_copy(update={"login_ip": Rate(count=2, period_s=60)})
    configured = settings.model_copy(
        update={
            "rate_limit_backend": RateLimitBackend(backend),
            "redis_url": url,
            "redis_key_prefix": f"authsvc-test:{uuid.uuid4().hex}:",
            "redis_timeout_s": 0.3,
            "rate_limits": limits,
        }
    )
    server = await create_server(
        Settings.model_validate(configured.model_dump()), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    return server


@pytest.fixture
async def on_redis(
    settings: Settings, clock: FrozenClock, redis_url: str, database_url: str
) -> AsyncIterator[Server]:
    if not database_url.startswith("sqlite"):
        pytest.skip("the limiter's backend does not depend on the database")
    server = await _server(settings, clock, redis_url)
    yield server
    await server.stop(grace=0)


def _login(who: Any) -> pb.LoginRequest:
    return pb.LoginRequest(
        organization_siret=who.organization_siret,
        login=who.login,
        password=pb.PasswordCredential(password=PASSWORD),
        client=CLIENT,
    )


async def test_limits_live_in_redis(on_redis: Server) -> None:
    assert on_redis.app.limits.backend.name == "redis"
    who = await seed_account(on_redis)
    async with aio_channel(f"127.0.0.1:{on_redis.port}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        for _ in range(2):
            await stub.Login(_login(who))
        refused = await failure_of(stub.Login(_login(who)))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        assert refused.retry_after == pytest.approx(30)


async def test_limits_live_in_a_redis_cluster(
    settings: Settings, clock: FrozenClock, redis_cluster: RedisClusterNodes, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the limiter's backend does not depend on the database")
    server = await _server(settings, clock, redis_cluster.url, backend="redis-cluster")
    try:
        assert server.app.limits.backend.name == "redis-cluster"
        who = await seed_account(server)
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            pending = (await stub.Login(_login(who))).pending_flow
            await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
            await stub.Login(_login(who))
            refused = await failure_of(stub.Login(_login(who)))
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
            )
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=SENDS_HEALTH))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace=0)


def _commands(nodes: RedisClusterNodes) -> dict[str, int]:
    """Calls per command summed over the cluster's nodes (INFO commandstats): work counted."""
    calls: dict[str, int] = {}
    for port in nodes.live():
        for line in redis_cli(port, "info", "commandstats").splitlines():
            name, _, stats = line.partition(":")
            if name.startswith("cmdstat_"):
                count = int(stats.split(",")[0].removeprefix("calls="))
                calls[name.removeprefix("cmdstat_")] = (
                    calls.get(name.removeprefix("cmdstat_"), 0) + count
                )
    return calls


async def test_first_decision_after_start_is_one_script_call_on_a_cluster(
    settings: Settings, clock: FrozenClock, redis_cluster: RedisClusterNodes, database_url: str
) -> None:
    """start() loads the slot map and the script before SERVING: each decision of the first
    call (a Login) sends one EVALSHA and nothing else (no CLUSTER SLOTS, COMMAND or SCRIPT
    LOAD inside its timeout), and is decided in Redis, not by the in-process fallback."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the limiter's backend does not depend on the database")
    server = await _server(settings, clock, redis_cluster.url, backend="redis-cluster")
    try:
        backend = server.app.limits.backend
        assert isinstance(backend, RedisBackend)
        who = await seed_account(server)
        before = _commands(redis_cluster)
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            assert (await stub.Login(_login(who))).HasField("pending_flow")
        after = _commands(redis_cluster)
        spent = {name: after[name] - before.get(name, 0) for name in after}
        # INFO itself is counted, and the readiness probe may PING meanwhile. A Login makes
        # two decisions (its IP before the password, then the account's limits): one EVALSHA
        # each, and the script's own GETs and SETs.
        sent = {name for name, n in spent.items() if n and name not in ("info", "ping")}
        assert sent == {"evalsha", "get", "set"}
        assert spent["evalsha"] == 2
        assert backend.fallbacks == 0 and backend.available
    finally:
        await server.stop(grace=0)


async def test_redis_unreachable_fails_closed_for_sends(
    settings: Settings, clock: FrozenClock, redis_url: str, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the limiter's backend does not depend on the database")
    server = await _server(settings, clock, "redis://127.0.0.1:1/0")  # nothing listens there
    try:
        who = await seed_account(server)
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            pending = (await stub.Login(_login(who))).pending_flow  # in-process fallback
            backend = server.app.limits.backend
            assert isinstance(backend, RedisBackend) and backend.fallbacks == 2  # two decisions
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=SENDS_HEALTH))
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(grace=0)

"""Liveness and readiness over real gRPC health checking (authsvc/health.py).

Readiness follows a real PostgreSQL connection cut and restored: the server reaches PostgreSQL
through a TCP proxy on the loopback that the test closes (every connection dropped, the port
refused) and reopens on the same port. The schema's revision is changed in the real database;
Redis is a real port where nothing listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from support import CLIENT, aio_channel

from authsvc import health
from authsvc.clock import FrozenClock
from authsvc.config import RateLimitBackend, Settings
from authsvc.server import ACCOUNT_SERVICE, AUTH_SERVICE, Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST = {"readiness_probe_interval_s": 0.1, "readiness_probe_timeout_s": 0.5}


async def status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


async def until(channel: grpc.aio.Channel, service: str, wanted: int, limit_s: float = 15) -> int:
    """Poll Check until `service` answers `wanted`; returns how many probes it took."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    polls = 0
    while (found := await status(channel, service)) != wanted:
        polls += 1
        assert loop.time() < deadline, f"{service} still {found}, wanted {wanted}"
        await asyncio.sleep(0.05)
    return polls


@contextlib.asynccontextmanager
async def serving(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    server = await create_server(settings, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


async def test_liveness_and_readiness_names(settings: Settings, clock: FrozenClock) -> None:
    async with (
        serving(settings.model_copy(update=FAST), clock) as server,
        aio_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        for service in ("", health.LIVENESS, health.READINESS, AUTH_SERVICE, ACCOUNT_SERVICE):
            assert await status(channel, service) == SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await status(channel, "authsvc.nope")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_schema_behind_the_code_is_not_ready(settings: Settings, clock: FrozenClock) -> None:
    async with (
        serving(settings.model_copy(update=FAST), clock) as server,
        aio_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        [head] = health.migrations_head()
        async with server.app.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        await until(channel, health.READINESS, NOT_SERVING)
        assert await status(channel, AUTH_SERVICE) == NOT_SERVING
        assert await status(channel, health.LIVENESS) == SERVING
        assert server.readiness is not None and server.readiness.last is not None
        assert server.readiness.last.reasons() == ["schema_not_at_head"]
        async with server.app.engine.begin() as connection:
            await connection.execute(
                text("UPDATE alembic_version SET version_num = :head"), {"head": head}
            )
        await until(channel, health.READINESS, SERVING)
        assert await status(channel, AUTH_SERVICE) == SERVING


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_unreachable_redis_takes_readiness_only(
    settings: Settings, clock: FrozenClock
) -> None:
    redis = {
        "rate_limit_backend": RateLimitBackend.REDIS,
        "redis_url": f"redis://127.0.0.1:{_closed_port()}/15",
        "redis_timeout_s": 0.2,
    }
    async with (
        serving(settings.model_copy(update={**FAST, **redis}), clock) as server,
        aio_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        assert await status(channel, health.READINESS) == NOT_SERVING
        assert await status(channel, health.SENDS) == NOT_SERVING
        # Logins and verifications go on without Redis: the API's own names stay SERVING.
        assert await status(channel, AUTH_SERVICE) == SERVING
        assert await status(channel, health.LIVENESS) == SERVING
        assert server.readiness is not None and server.readiness.last is not None
        assert server.readiness.last.reasons() == ["redis_unreachable"]


# ---- a real PostgreSQL connection cut --------------------------------------------------------


class TcpProxy:
    """Forwards a loopback port to PostgreSQL; `cut()` drops every connection and refuses new
    ones, `restore()` listens on the same port again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_readiness_follows_a_cut_postgresql_connection(
    settings: Settings, clock: FrozenClock
) -> None:
    url = make_url(settings.database_url)
    target = urlsplit(f"//{url.host or '127.0.0.1'}:{url.port or 5432}")
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        async with (
            serving(settings.model_copy(update={**FAST, "database_url": proxied}), clock) as server,
            aio_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            assert await status(channel, health.READINESS) == SERVING
            assert proxy.connections >= 1  # the server really goes through the proxy

            await proxy.cut()
            await until(channel, health.READINESS, NOT_SERVING)
            assert await status(channel, AUTH_SERVICE) == NOT_SERVING
            assert await status(channel, health.LIVENESS) == SERVING
            assert await status(channel, "") == SERVING
            assert server.readiness is not None and server.readiness.last is not None
            assert server.readiness.last.reasons() == ["database_unreachable"]
            # A call meanwhile: UNAVAILABLE with its reason, retriable; never INTERNAL.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.AuthServiceStub(channel).ValidateSession(
                    pb.ValidateSessionRequest(session_token="x" * 43, client=CLIENT)
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            before = proxy.connections
            await proxy.restore()
            await until(channel, health.READINESS, SERVING)
            assert await status(channel, AUTH_SERVICE) == SERVING
            assert proxy.connections > before  # the pool reconnected through the proxy
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await pb_grpc.AuthServiceStub(channel).ValidateSession(
                    pb.ValidateSessionRequest(session_token="x" * 43, client=CLIENT)
                )
            assert answered.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.cut()

"""Shared fixtures: settings on SQLite or PostgreSQL, a real server on port 0, seeded accounts.

PostgreSQL suites use AUTHSVC_TEST_POSTGRES_URL (default: the local server). When no server
answers they skip with the reason shown, except under CI=true, where they fail: CI has the server.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub
from support import (
    POSTGRES_URL,
    START,
    TEST_API_KEYS,
    Inbox,
    Seeded,
    aio_channel,
    postgres_admin,
    seed_account,
)
from topology.redis_cluster import RedisClusterNodes

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.db.migrate import upgrade
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2_grpc

IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("AUTHSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the server must be there)")
    pytest.skip(reason)


async def _postgres_admin_ok() -> str | None:
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None
    except Exception as error:
        return f"PostgreSQL at {make_url(POSTGRES_URL).render_as_string()} unreachable: {error}"
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database, made once; each test gets a fresh copy of it."""
    problem = asyncio.run(_postgres_admin_ok())
    if problem:
        _unavailable(problem)
    name = f"authsvc_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    upgrade(make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_admin = postgres_admin


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'authsvc.db'}"
        upgrade(url)
        yield url
        return
    template = request.getfixturevalue("postgres_template")
    name = f"authsvc_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key_file=tmp_path / "secret.key",
        sms_provider="file",
        voice_provider="file",
        email_provider="file",
        outbox_file=tmp_path / "outbox.jsonl",
        dispatcher_poll_s=0.05,
        grace_period_s=0,
        api_keys=TEST_API_KEYS,
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server of the Redis suites (a test isolates itself with its own key prefix)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        _unavailable(f"Redis at {REDIS_URL} unreachable: {error}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def server(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    server = await create_server(settings, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    # Calls carry the test backend's API key (the server refuses calls without credentials).
    async with aio_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> AuthServiceAsyncStub:
    return auth_service_pb2_grpc.AuthServiceStub(channel)


@pytest.fixture
async def alice(server: Server) -> Seeded:
    return await seed_account(server)


@pytest.fixture
def inbox(settings: Settings) -> Inbox:
    return Inbox(settings.outbox_file)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of 6 processes (3 primaries, 3 replicas), one per test module."""
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes.start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as error:
        nodes.stop()
        _unavailable(f"Redis Cluster could not start: {error}")
    yield nodes
    nodes.stop()

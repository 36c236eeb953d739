"""PostgreSQL primary lost, standby promoted, under a running server (tests/topology/
postgres_pair.py: a pair of its own, synchronous streaming replication).

The server is given both addresses (`?host=...&host=...&target_session_attrs=primary`): after
the fault its pool drops the dead connections on their first error and reconnects to whichever
server is the primary. Meanwhile its readiness (the API services' health) is NOT_SERVING, from
the periodic database probe; nothing committed before the fault is lost (a commit returned only
once the standby had it): the session still validates, the code sent before the fault still
verifies its flow.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import CLIENT, PASSWORD, TEST_API_KEYS, Inbox, aio_channel, seed_account, sign_in
from topology.postgres_pair import PostgresPair

from authsvc.config import Settings
from authsvc.db.migrate import upgrade
from authsvc.server import AUTH_SERVICE, Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def pair() -> Iterator[PostgresPair]:
    made = PostgresPair()
    try:
        made.start()
    except (FileNotFoundError, RuntimeError) as error:
        made.stop()
        if IN_CI:
            pytest.fail(f"{error} (CI=true: the PostgreSQL binaries are there)")
        pytest.skip(str(error))
    yield made
    made.stop()


async def _create_database(pair: PostgresPair) -> str:
    engine = create_async_engine(pair.url(), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text('CREATE DATABASE "authsvc"'))
    finally:
        await engine.dispose()
    url = pair.url("authsvc")
    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture
async def server(pair: PostgresPair, tmp_path: Path) -> AsyncIterator[Server]:
    settings = Settings(
        database_url=await _create_database(pair),
        secret_key_file=tmp_path / "secret.key",
        sms_provider="file",
        voice_provider="file",
        email_provider="file",
        outbox_file=tmp_path / "outbox.jsonl",
        dispatcher_poll_s=0.05,
        api_keys=TEST_API_KEYS,
    )
    made = await create_server(settings, listen="127.0.0.1:0")
    await made.start()
    yield made
    await made.stop(grace=0)


async def _until(ready: Callable[[], Awaitable[bool]], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not await ready():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_primary_lost_standby_promoted_nothing_committed_is_lost(
    pair: PostgresPair, server: Server
) -> None:
    inbox = Inbox(server.app.settings.outbox_file)
    who = await seed_account(server)
    async with aio_channel(f"127.0.0.1:{server.port}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=AUTH_SERVICE))
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

        async def not_serving() -> bool:
            return not await serving()

        session = (await sign_in(stub, inbox, who)).session.token
        pending = (
            await stub.Login(
                pb.LoginRequest(
                    organization_siret=who.organization_siret,
                    login=who.login,
                    password=pb.PasswordCredential(password=PASSWORD),
                    client=CLIENT,
                )
            )
        ).pending_flow
        await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
        code = await inbox.code_to("+33612345678")

        pair.pg_ctl("primary", "stop", mode="immediate")  # a crash: no shutdown checkpoint
        await _until(not_serving)
        during: list[str] = []
        try:
            await stub.ValidateSession(
                pb.ValidateSessionRequest(session_token=session, client=CLIENT), timeout=10
            )
            during.append("OK")
        except grpc.aio.AioRpcError as error:
            during.append(error.code().name)
        pair.pg_ctl("standby", "promote")
        await _until(serving)
        # A lost database connection is UNAVAILABLE: retriable, never INTERNAL.
        assert during == ["UNAVAILABLE"]

        # Committed before the fault, so on the standby: the session, the flow and its code.
        await stub.ValidateSession(
            pb.ValidateSessionRequest(session_token=session, client=CLIENT), timeout=10
        )
        verified = await stub.Verify(
            pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT), timeout=10
        )
        await stub.ValidateSession(
            pb.ValidateSessionRequest(session_token=verified.login.session.token, client=CLIENT),
            timeout=10,
        )

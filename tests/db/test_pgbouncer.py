"""The service through PgBouncer (Debian's package) in front of PostgreSQL: a whole login,
session checks and logout over gRPC.

Session mode is the supported one. Transaction mode is kept here as an xfail, the
measurement behind that choice (README "Deployment"): asyncpg prepares every statement in a
step of its own (Parse/Describe/Sync) before it binds and runs it, and the hot paths run their
reads and single-statement writes in autocommit, one round trip each; in transaction mode
PgBouncer may hand the next step to another server connection after that Sync, which has never
seen the statement. Turning asyncpg's statement cache off (statement_cache_size=0, SQLAlchemy's
prepared_statement_cache_size=0, unique statement names) does not change that: measured, the
first login fails with `prepared statement "..." does not exist`. Not strict: whether a step
lands on another server connection depends on timing (a CI run saw this login pass while the
dispatcher beside it failed with that error), so a pass says nothing either way."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from sqlalchemy.engine import make_url
from support import CLIENT, Inbox, aio_channel, failure_of, seed_account, sign_in
from topology.pgbouncer import PgBouncer

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

pytestmark = pytest.mark.postgres
IN_CI = os.environ.get("CI", "").lower() == "true"


TRANSACTION_MODE = pytest.param(
    "transaction",
    marks=pytest.mark.xfail(
        strict=False, reason="asyncpg's separate prepare step in autocommit (module docstring)"
    ),
)


@pytest.fixture(scope="module", params=["session", TRANSACTION_MODE])
def pgbouncer(request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    from support import POSTGRES_URL

    upstream = make_url(POSTGRES_URL)
    bouncer = PgBouncer(
        upstream.host or "127.0.0.1",
        upstream.port or 5432,
        request.param,
    )
    try:
        bouncer.start()
    except (FileNotFoundError, RuntimeError) as error:
        if IN_CI:
            pytest.fail(f"{error} (CI=true: .ci/run installs it)")
        pytest.skip(str(error))
    yield bouncer
    bouncer.stop()


@pytest.fixture
async def through_pgbouncer(
    settings: Settings, clock: FrozenClock, pgbouncer: PgBouncer
) -> AsyncIterator[Server]:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("PgBouncer pools PostgreSQL connections")
    url = make_url(settings.database_url).set(host="127.0.0.1", port=pgbouncer.port)
    configured = settings.model_copy(
        update={"database_url": url.render_as_string(hide_password=False)}
    )
    server = await create_server(
        Settings.model_validate(configured.model_dump()), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    yield server
    await server.stop(grace=0)


async def test_a_login_and_its_session_work_through_pgbouncer(
    through_pgbouncer: Server, inbox: Inbox
) -> None:
    who = await seed_account(through_pgbouncer)
    async with aio_channel(f"127.0.0.1:{through_pgbouncer.port}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        for _ in range(3):  # more statements than one connection's first use
            login = await sign_in(stub, inbox, who)
            token = login.session.token
            for _ in range(5):
                await stub.ValidateSession(
                    pb.ValidateSessionRequest(session_token=token, client=CLIENT)
                )
            await stub.Logout(pb.LogoutRequest(session_token=token, client=CLIENT))
            refused = await failure_of(
                stub.ValidateSession(pb.ValidateSessionRequest(session_token=token, client=CLIENT))
            )
            assert refused.code == grpc.StatusCode.UNAUTHENTICATED

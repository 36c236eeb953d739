"""Test helpers shared by the suites: constants, seeding, the inbox, rich-error decoding."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select, text

from authsvc.accounts import create_account, create_organization
from authsvc.db import Organization, Role
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

# The PostgreSQL server of the PostgreSQL suites (the conftest's fixtures and the topology's).
POSTGRES_URL = os.environ.get(
    "AUTHSVC_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def postgres_admin(statement: str) -> None:
    """One statement on POSTGRES_URL outside a transaction (CREATE/DROP DATABASE)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


PASSWORD = "correct horse battery staple"
SIRET = "21180001500011"
OTHER_SIRET = "73282932000074"
MOBILE = "+33612345678"
LANDLINE = "+33248123456"
START = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    organization_siret: str
    login: str
    account_id: uuid.UUID


async def seed_account(
    server: Server,
    *,
    login: str = "alice",
    phone: str = MOBILE,
    siret: str = SIRET,
    role: Role = Role.MEMBER,
) -> Seeded:
    app = server.app
    password_hash = await app.passwords.hash_async(PASSWORD)
    async with app.write() as db:
        organization = await db.scalar(select(Organization).where(Organization.siret == siret))
        if organization is None:
            organization = await create_organization(app, db, siret=siret, name=f"Org {siret}")
            await db.flush()
        account = await create_account(
            app,
            db,
            organization_id=organization.id,
            login=login,
            display_name=login.title(),
            email=f"{login}@example.fr",
            phone=phone,
            role=role,
            password_hash=password_hash,
        )
    return Seeded(siret, login, account.id)


CLIENT = common_pb2.ClientContext(ip_address="203.0.113.7", user_agent="pytest")

# The backend credentials every test client sends (the servers under test know this key).
TEST_API_KEY = "authsvc_tests-only-key-0123456789abcdefghijklmnopqrstuv"
TEST_API_KEYS = ({"name": "tests", "key": TEST_API_KEY, "rpcs": ["*"]},)
AUTH_METADATA = (("authorization", f"Bearer {TEST_API_KEY}"),)
# For `authsvc serve` in a subprocess.
TEST_API_KEYS_ENV = {"AUTHSVC_API_KEYS": json.dumps(TEST_API_KEYS)}


def _with_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[tuple[str, str | bytes]]:
    present = any(key == "authorization" for key, _ in metadata or ())
    return [*(metadata or ()), *(() if present else AUTH_METADATA)]


class _AioBearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(
            details._replace(metadata=grpc.aio.Metadata(*_with_key(details.metadata))), request
        )


class _SyncBearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=_with_key(details.metadata)), request)


def aio_channel(target: str, **kwargs: Any) -> grpc.aio.Channel:
    """An asyncio channel whose calls carry the test backend's API key (unless they set one)."""
    interceptors: Any = [_AioBearer()]
    return grpc.aio.insecure_channel(target, interceptors=interceptors, **kwargs)


def sync_channel(target: str, **kwargs: Any) -> grpc.Channel:
    """A blocking channel whose calls carry the test backend's API key (unless they set one)."""
    return grpc.intercept_channel(grpc.insecure_channel(target, **kwargs), _SyncBearer())


class Inbox:
    """Reads what the `file` provider delivered: the test's phone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read = 0  # messages before this index were consumed by next_to()

    def messages(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    async def wait_for(self, count: int) -> list[dict[str, str]]:
        deadline = asyncio.get_running_loop().time() + 10.0
        while True:
            messages = self.messages()
            if len(messages) >= count:
                return messages
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"expected {count} messages, got {len(messages)}")
            await asyncio.sleep(0.02)

    async def latest_code(self, count: int) -> str:
        message = (await self.wait_for(count))[count - 1]
        match = re.search(r"#(\d{6})$", message["text"]) or re.search(
            r"code est : ((?:\d, ){5}\d)", message["text"]
        )
        assert match, message["text"]
        return match.group(1).replace(", ", "")

    async def next_to(self, to: str) -> dict[str, str]:
        """The next message to `to` that no earlier call returned."""
        deadline = asyncio.get_running_loop().time() + 10.0
        while True:
            messages = self.messages()
            for index in range(self._read, len(messages)):
                if messages[index]["to"] == to:
                    self._read = index + 1
                    return messages[index]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no new message to {to}")
            await asyncio.sleep(0.02)

    async def code_to(self, to: str) -> str:
        """The code in the next message to `to` (SMS, voice or email)."""
        text = (await self.next_to(to))["text"]
        # 6 digits by default, up to 10 (AUTHSVC_CODE_DIGITS).
        match = (
            re.search(r"#(\d{6,10})$", text)
            or re.search(r"code est : ((?:\d, ){5,9}\d)", text)
            or re.search(r"\b(\d{6,10})\b", text)
        )
        assert match, text
        return match.group(1).replace(", ", "")


@dataclass(frozen=True)
class RpcFailure:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    retry_after: float | None


async def failure_of(call: Awaitable[object]) -> RpcFailure:
    """Await a call that must fail; return its status code, ErrorInfo reason and RetryInfo."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None, f"no rich status on {error.code()}: {error.details()}"
        reason, metadata, retry_after = "", {}, None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            retry = error_details_pb2.RetryInfo()
            if detail.Is(info.DESCRIPTOR):
                detail.Unpack(info)
                assert info.domain == "authsvc.v1"
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(retry.DESCRIPTOR):
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        return RpcFailure(error.code(), reason, metadata, retry_after)
    raise AssertionError("the call succeeded")


# ---- signing in and stepping up over gRPC --------------------------------------------------


async def open_login_flow(stub: Stub, server: Server) -> str:
    """A new account's Login with its password: the pending flow's id (a code is needed)."""
    who = await seed_account(server)
    response = await stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=who.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        )
    )
    return response.pending_flow.flow_id


async def sign_in(
    stub: Stub, inbox: Inbox, who: Seeded, *, phone: str = MOBILE, password: str = PASSWORD
) -> pb.LoginVerification:
    """A full login with a code read from the phone; returns the session and device token."""
    pending = (
        await stub.Login(
            pb.LoginRequest(
                organization_siret=who.organization_siret,
                login=who.login,
                password=pb.PasswordCredential(password=password),
                client=CLIENT,
            )
        )
    ).pending_flow
    await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    code = await inbox.code_to(phone)
    verified = await stub.Verify(
        pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
    )
    return verified.login


async def open_step_up(
    stub: Stub,
    session: str,
    action: common_pb2.SensitiveAction.ValueType,
    *,
    target: str = "",
    values: pb.ActionValues | None = None,
) -> pb.AuthorizeSensitiveActionResponse:
    return await stub.AuthorizeSensitiveAction(
        pb.AuthorizeSensitiveActionRequest(
            session_token=session,
            action=action,
            target_account_id=target,
            new_values=values or pb.ActionValues(),
            client=CLIENT,
        )
    )


async def step_up(
    stub: Stub,
    inbox: Inbox,
    session: str,
    action: common_pb2.SensitiveAction.ValueType,
    *,
    target: str = "",
    values: pb.ActionValues | None = None,
    phone: str = MOBILE,
) -> pb.ActionGrant:
    """AuthorizeSensitiveAction -> Challenge -> Verify: the grant."""
    flow = (await open_step_up(stub, session, action, target=target, values=values)).pending_flow
    assert flow.purpose == common_pb2.FLOW_PURPOSE_STEP_UP
    await stub.Challenge(pb.ChallengeRequest(flow_id=flow.flow_id, client=CLIENT))
    code = await inbox.code_to(phone)
    verified = await stub.Verify(pb.VerifyRequest(flow_id=flow.flow_id, code=code, client=CLIENT))
    assert verified.WhichOneof("result") == "action_grant"
    return verified.action_grant


async def waiting_on_locks(server: Server, count: int) -> None:
    """PostgreSQL: until `count` other backends wait on a lock (or ten seconds)."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while asyncio.get_running_loop().time() < deadline:
        async with server.app.read() as db:
            waiting = await db.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            )
        if (waiting or 0) >= count:
            return
        await asyncio.sleep(0.02)

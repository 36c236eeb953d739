"""No code, password, token or full phone number in the logs, nor in clear at rest.

A full login (Login -> Challenge -> code from the inbox -> Verify -> ValidateSession -> Logout)
runs while everything the process logs is captured: structlog events (structlog.testing, which
works whatever renderer is configured), stdlib logging at DEBUG (which includes SQLAlchemy's
statements and their parameters), and whatever reaches file descriptors 1 and 2. Then every
column of every table is read back, and on SQLite the raw database files too. On SQLite and
PostgreSQL, via the shared fixtures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs
from support import CLIENT, MOBILE, PASSWORD, Inbox, aio_channel, seed_account

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.outbox import Payload
from authsvc.courier.providers import DeliveryError, Provider
from authsvc.db import MessageStatus, OutboxMessage
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

NATIONAL = "0" + MOBILE.removeprefix("+33")  # 0612345678
SIGNIFICANT = MOBILE.removeprefix("+33")  # 612345678
TABLES = {
    "organizations",
    "accounts",
    "flows",
    "sessions",
    "trusted_devices",
    "outbox_messages",
}


def phone_forms() -> dict[str, str]:
    spaced = " ".join([NATIONAL[:2], NATIONAL[2:4], NATIONAL[4:6], NATIONAL[6:8], NATIONAL[8:]])
    return {
        "phone (E.164)": MOBILE,
        "phone (national)": NATIONAL,
        "phone (significant digits)": SIGNIFICANT,
        "phone (spaced)": spaced,
        "phone (international spaced)": "+33 " + spaced[1:],
    }


def code_forms(code: str) -> dict[str, str]:
    return {"code": code, "code (read aloud)": ", ".join(code)}


def find_leaks(where: str, value: object, secrets: dict[str, str]) -> list[str]:
    """Which secrets appear in `value` (text, or bytes searched for the UTF-8 form)."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        blob = bytes(value)
        return [f"{name} in {where}" for name, secret in secrets.items() if secret.encode() in blob]
    text = value if isinstance(value, str) else str(value)
    return [
        f"{name} in {where}"
        for name, secret in secrets.items()
        if secret in text or secret.encode() in text.encode("utf-8", "surrogatepass")
    ]


# ---- capturing what the process logs -----------------------------------------------------------


@dataclass
class Logs:
    events: list[MutableMapping[str, Any]]
    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]

    def everything(self) -> str:
        out, err = self.capfd.readouterr()
        rendered = [json.dumps(event, default=repr, ensure_ascii=False) for event in self.events]
        records = [
            f"{record.name} {record.levelname} {record.getMessage()} {record.args!r}"
            for record in self.caplog.records
        ]
        return "\n".join([*rendered, *records, out, err])

    def rpc_methods(self) -> list[str]:
        return [event["method"] for event in self.events if event.get("event") == "rpc"]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Logs]:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        yield Logs(events, caplog, capfd)


# ---- reading everything at rest ----------------------------------------------------------------


async def dump(server: Server) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, reflected from the database itself (not from the models)."""
    tables: dict[str, list[dict[str, object]]] = {}
    async with server.app.engine.connect() as connection:
        metadata = MetaData()
        await connection.run_sync(metadata.reflect)
        for table in metadata.sorted_tables:
            rows = (await connection.execute(select(table))).mappings().all()
            tables[table.name] = [dict(row) for row in rows]
    return tables


def leaks_at_rest(
    tables: dict[str, list[dict[str, object]]], settings: Settings, secrets: dict[str, str]
) -> list[str]:
    found = []
    for table, rows in tables.items():
        for number, row in enumerate(rows):
            for column, value in row.items():
                found += find_leaks(f"{table}[{number}].{column}", value, secrets)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":  # the raw files too, with the write-ahead log
        assert url.database
        for suffix in ("", "-wal", "-shm"):
            path = Path(url.database + suffix)
            if path.exists():
                found += find_leaks(path.name, path.read_bytes(), secrets)
    return found


async def wait_until_delivered(server: Server, count: int, limit_s: float = 10.0) -> None:
    """Poll (with a deadline) until `count` outbox messages reached a final state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    final = {MessageStatus.SENT, MessageStatus.ABANDONED}
    while True:
        async with server.app.read() as db:
            statuses = list(await db.scalars(select(OutboxMessage.status)))
        if len(statuses) >= count and all(MessageStatus(status) in final for status in statuses):
            return
        if loop.time() > deadline:
            raise AssertionError(f"outbox not delivered in {limit_s} s: {statuses}")
        await asyncio.sleep(0.02)


# ---- the full login ----------------------------------------------------------------------------


async def test_full_login_leaves_no_secret_in_logs_or_at_rest(
    stub: Stub, server: Server, settings: Settings, inbox: Inbox, logs: Logs
) -> None:
    alice = await seed_account(server)
    pending = (
        await stub.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=alice.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            )
        )
    ).pending_flow
    sent = await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    code = await inbox.latest_code(1)
    assert inbox.messages()[0]["to"] == MOBILE  # the phone really went through the service
    verified = await stub.Verify(
        pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
    )
    session_token = verified.login.session.token
    device_token = verified.login.device_token
    await stub.ValidateSession(
        pb.ValidateSessionRequest(session_token=session_token, client=CLIENT)
    )
    await stub.Logout(pb.LogoutRequest(session_token=session_token, client=CLIENT))
    await wait_until_delivered(server, 1)

    secrets = {
        **code_forms(code),
        **phone_forms(),
        "password": PASSWORD,
        "session token": session_token,
        "device token": device_token,
    }
    # What the service hands back for display is masked.
    assert find_leaks("masked destination", sent.masked_destination, phone_forms()) == []
    assert find_leaks("masked destination", pending.masked_destination, phone_forms()) == []

    # Logs: not vacuous (one rpc event per call, the delivery), and clean.
    assert logs.rpc_methods() == ["Login", "Challenge", "Verify", "ValidateSession", "Logout"]
    assert any(event.get("event") == "message_sent" for event in logs.events)
    assert find_leaks("the logs", logs.everything(), secrets) == []

    # At rest: every column of every table, and the sent message's payload is purged.
    tables = await dump(server)
    assert set(tables) >= TABLES and all(tables[name] for name in TABLES)
    assert len(tables["sessions"]) == 1 and tables["sessions"][0]["revoked_at"] is not None
    [message] = tables["outbox_messages"]
    assert message["status"] == MessageStatus.SENT and message["payload_sealed"] is None
    assert leaks_at_rest(tables, settings, secrets) == []


# ---- a message still queued --------------------------------------------------------------------


@pytest.fixture
async def quiet_server(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    """The server without its dispatcher: messages stay queued until the test delivers them."""
    quiet = settings.model_copy(update={"dispatcher_enabled": False})
    server = await create_server(quiet, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def quiet_stub(quiet_server: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{quiet_server.port}") as channel:
        yield pb_grpc.AuthServiceStub(channel)


async def queue_a_code(stub: Stub, server: Server) -> OutboxMessage:
    alice = await seed_account(server)
    pending = (
        await stub.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=alice.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            )
        )
    ).pending_flow
    sent = await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    assert sent.delivery_status == common_pb2.DELIVERY_STATUS_QUEUED
    async with server.app.read() as db:
        [message] = list(await db.scalars(select(OutboxMessage)))
    assert message.status == MessageStatus.QUEUED and message.payload_sealed is not None
    return message


def opened(server: Server, message: OutboxMessage) -> tuple[Payload, str]:
    """The sealed payload, opened with the server's key: the destination and the code."""
    assert message.payload_sealed is not None
    payload = Payload.loads(server.app.keys.sealer.open(message.payload_sealed, message.id.bytes))
    match = re.search(r"#(\d{6})$", payload.text)
    assert match, payload.text
    return payload, match.group(1)


async def test_queued_message_is_sealed_and_purged_once_sent(
    quiet_stub: Stub, quiet_server: Server, settings: Settings, inbox: Inbox, logs: Logs
) -> None:
    message = await queue_a_code(quiet_stub, quiet_server)
    payload, code = opened(quiet_server, message)
    assert payload.to == MOBILE  # the payload holds the phone and the code, sealed
    secrets = {**code_forms(code), **phone_forms(), "password": PASSWORD}

    queued = await dump(quiet_server)
    assert leaks_at_rest(queued, settings, secrets) == []
    assert inbox.messages() == []  # nothing delivered: the dispatcher is off

    assert await Dispatcher(quiet_server.app).run_once() == 1
    [sms] = inbox.messages()
    assert sms["to"] == MOBILE and sms["text"].endswith(f"#{code}")

    delivered = await dump(quiet_server)
    [row] = delivered["outbox_messages"]
    assert row["status"] == MessageStatus.SENT and row["payload_sealed"] is None
    assert row["sent_at"] is not None
    assert leaks_at_rest(delivered, settings, secrets) == []
    assert logs.rpc_methods() == ["Login", "Challenge"]
    assert find_leaks("the logs", logs.everything(), secrets) == []


class RefusingProvider:
    """A provider that refuses the number, quoting it, as real SMS gateways' errors do."""

    def __init__(self, *, permanent: bool) -> None:
        self.permanent = permanent

    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        raise DeliveryError(
            f"The 'To' number {to} is not a valid phone number", permanent=self.permanent
        )


@pytest.mark.parametrize("permanent", [True, False], ids=["abandoned", "retried"])
async def test_provider_errors_leave_no_phone_number_behind(
    quiet_stub: Stub,
    quiet_server: Server,
    settings: Settings,
    logs: Logs,
    permanent: bool,
) -> None:
    message = await queue_a_code(quiet_stub, quiet_server)
    _, code = opened(quiet_server, message)
    secrets = {**code_forms(code), **phone_forms()}
    providers: dict[str, Provider] = {
        channel: RefusingProvider(permanent=permanent) for channel in ("sms", "voice", "email")
    }
    assert await Dispatcher(quiet_server.app, providers).run_once() == 1

    tables = await dump(quiet_server)
    [row] = tables["outbox_messages"]
    if permanent:  # abandoned: the payload is purged like a sent one
        assert row["status"] == MessageStatus.ABANDONED and row["payload_sealed"] is None
    else:  # to be retried: still sealed
        assert row["status"] == MessageStatus.FAILED and row["payload_sealed"] is not None
    assert row["last_error"]
    assert leaks_at_rest(tables, settings, secrets) == []
    assert find_leaks("the logs", logs.everything(), secrets) == []


def test_leak_finder_finds_what_it_looks_for() -> None:
    """The search itself can fail: text, UTF-8 bytes, inside other values."""
    secrets = {**phone_forms(), **code_forms("987650")}
    assert find_leaks("t", f"to={MOBILE}", secrets) == [
        "phone (E.164) in t",
        "phone (significant digits) in t",
    ]
    assert find_leaks("b", b"\x00\x01" + NATIONAL.encode() + b"\xff", secrets) == [
        "phone (national) in b",
        "phone (significant digits) in b",
    ]
    assert find_leaks("v", "9, 8, 7, 6, 5, 0", secrets) == ["code (read aloud) in v"]
    assert find_leaks("n", None, secrets) == []
    assert find_leaks("m", "+33 •••••••78", secrets) == []

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
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import pytest
from courier.gateways import HttpGatewayServer
from leaks import (
    NATIONAL,
    TABLES,
    Logs,
    capturing,
    code_forms,
    dump,
    find_leaks,
    leaks_at_rest,
    phone_forms,
)
from sqlalchemy import select
from support import CLIENT, MOBILE, PASSWORD, Inbox, aio_channel, seed_account, sign_in, step_up

from authsvc.accounts import creation
from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderName, Settings
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.outbox import Payload
from authsvc.courier.providers import DeliveryError, Provider
from authsvc.db import MessageStatus, OutboxMessage, Role
from authsvc.server import Server, create_server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import account_service_pb2_grpc, common_pb2
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub


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


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Logs]:
    yield from capturing(caplog, capfd)


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


# ---- gateways that quote what they were sent -----------------------------------------------


@pytest.fixture
def echoing_gateway() -> Iterator[HttpGatewayServer]:
    with HttpGatewayServer() as gateway:
        yield gateway


GATEWAY_ROUTES = {
    "voice over http": (common_pb2.CHANNEL_VOICE, ProviderName.HTTP),
    "sms over http": (common_pb2.CHANNEL_SMS, ProviderName.HTTP),
    "sms over kannel": (common_pb2.CHANNEL_SMS, ProviderName.KANNEL),
}


@pytest.mark.parametrize("route", list(GATEWAY_ROUTES), ids=list(GATEWAY_ROUTES))
async def test_a_gateway_quoting_the_code_in_its_error_leaks_it_nowhere(
    settings: Settings,
    clock: FrozenClock,
    echoing_gateway: HttpGatewayServer,
    logs: Logs,
    route: str,
) -> None:
    """The attack: a gateway's error quotes the voice text ("4, 8, 2, 9, 1, 0"); whoever reads
    the logs or outbox_messages.last_error while the code lives signs in with it."""
    channel, sms_provider = GATEWAY_ROUTES[route]
    configured = settings.model_copy(
        update={
            "dispatcher_enabled": False,
            "sms_provider": sms_provider,
            "sms_http": HttpGateway(url=echoing_gateway.url),
            "kannel_url": echoing_gateway.url,
            "voice_provider": ProviderName.HTTP,
            "voice_http": HttpGateway(url=echoing_gateway.url),
        }
    )
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as grpc_channel:
            stub = pb_grpc.AuthServiceStub(grpc_channel)
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
            await stub.Challenge(
                pb.ChallengeRequest(flow_id=pending.flow_id, channel=channel, client=CLIENT)
            )
            echoing_gateway.script.set("echo-transient")
            dispatcher = Dispatcher(server.app)
            try:
                assert await dispatcher.run_once() == 1  # refused, quoting the text: retried
                [row] = (await dump(server))["outbox_messages"]
                assert row["status"] == MessageStatus.FAILED and row["last_error"]
                clock.advance(2)
                assert await dispatcher.run_once() == 1  # and sent
            finally:
                await dispatcher.close()
            sent = unquote_plus(
                echoing_gateway.requests[-1].body.decode() or echoing_gateway.requests[-1].path
            )
            match = re.search(r"#(\d{6})|code est : ((?:\d, ){5}\d)", sent)
            assert match, sent
            code = (match.group(1) or match.group(2)).replace(", ", "")
            # The code was live while the error was logged and stored.
            verified = await stub.Verify(
                pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
            )
            assert verified.login.session.token
        assert any(event.get("event") == "message_retry" for event in logs.events)
        secrets = {**code_forms(code), **phone_forms()}
        assert find_leaks("the logs", logs.everything(), secrets) == []
        assert leaks_at_rest(await dump(server), configured, secrets) == []
    finally:
        await server.stop(grace=0)


# ---- an activation token without a digit -------------------------------------------------------

DIGIT_FREE_TOKEN = (
    "kPqRsTuVwXyZaBcDeFgHiJkLmNoPqRsTuVwXyZ_-abc"  # 43 characters, as random_token(32)
)


async def test_an_activation_token_without_a_digit_is_kept_nowhere(
    stub: Stub,
    server: Server,
    settings: Settings,
    inbox: Inbox,
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack: about one token in 1,500 has no digit, and the summary kept such a token in
    clear; whoever reads outbox_messages activates the account with a password of their own.
    The token generator is made to draw such a token (the draw itself is not under test)."""
    monkeypatch.setattr(creation, "random_token", lambda nbytes=32: DIGIT_FREE_TOKEN)
    admin = await seed_account(server, login="admin", role=Role.ADMIN)
    session = (await sign_in(stub, inbox, admin)).session.token
    values = pb.ActionValues(
        login="nadia",
        display_name="Nadia B.",
        email="nadia@mairie.example",
        phone="+33698765432",
        role=common_pb2.ROLE_MEMBER,
    )
    grant = await step_up(
        stub, inbox, session, common_pb2.SENSITIVE_ACTION_CREATE_ACCOUNT, values=values
    )
    async with aio_channel(f"127.0.0.1:{server.port}") as grpc_channel:
        accounts = account_service_pb2_grpc.AccountServiceStub(grpc_channel)
        await accounts.CreateAccount(
            apb.CreateAccountRequest(
                session_token=session,
                grant_token=grant.grant_token,
                login=values.login,
                display_name=values.display_name,
                email=values.email,
                phone=values.phone,
                role=values.role,
                client=CLIENT,
            )
        )
    activation = await inbox.next_to("nadia@mairie.example")
    assert DIGIT_FREE_TOKEN in activation["text"]  # the real token went out
    await wait_until_delivered(server, 3)  # two codes to the admin, the activation

    tables = await dump(server)
    [row] = [m for m in tables["outbox_messages"] if m["template"] == "activation"]
    assert row["status"] == MessageStatus.SENT and row["payload_sealed"] is None
    assert row["summary"] and "••••" in str(row["summary"])
    secrets = {"activation token": DIGIT_FREE_TOKEN}
    assert leaks_at_rest(tables, settings, secrets) == []
    assert find_leaks("the logs", logs.everything(), secrets) == []

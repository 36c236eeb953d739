"""The automatic voice switch (AUTHSVC_VOICE_FALLBACK_AFTER_S) over real gRPC and a real HTTP
gateway (aiohttp on 127.0.0.1): an SMS code sent without a receipt for that long is followed by
one voice call on the same number, counted like any send; a delivered SMS, a flow at its send
cap or a number at its hourly cap gets no call. Time is the test's clock: the wait is counted,
never slept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from courier.test_failover import Gateway
from sqlalchemy import select
from support import CLIENT, PASSWORD, aio_channel, seed_account

from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderName, Settings
from authsvc.courier import receipts
from authsvc.courier.dispatcher import Dispatcher
from authsvc.db import Flow, MessageStatus, OutboxMessage, Receipt
from authsvc.db.statements import voice_fallback as voice_fallback_statements
from authsvc.flows.voice_fallback import VoiceFallback
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

AFTER_S = 30.0


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gateway = Gateway()
    await gateway.start()
    yield gateway
    await gateway.stop()


async def start(
    settings: Settings, clock: FrozenClock, gateway: Gateway, **extra: object
) -> Server:
    configured = settings.model_copy(
        update={
            "sms_provider": ProviderName.HTTP,
            "voice_provider": ProviderName.HTTP,
            "sms_http": HttpGateway(url=gateway.url),
            "voice_http": HttpGateway(url=gateway.url),
            "dispatcher_enabled": False,  # driven by the test, as the switch is
            "delivery_wait_s": 0.0,
            "voice_fallback_after_s": AFTER_S,
            # Receipts reach the service (the tests apply them in process, as the listener
            # would): the switch requires that they can.
            "receipts_public_url": "http://127.0.0.1:8081",
            **extra,
        }
    )
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    return server


async def sms_code(
    stub: Stub, server: Server, login: str, phone: str
) -> tuple[str, pb.ChallengeResponse]:
    alice = await seed_account(server, login=login, phone=phone)
    response = await stub.Login(
        pb.LoginRequest(
            organization_siret=alice.organization_siret,
            login=alice.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        )
    )
    flow_id = response.pending_flow.flow_id
    first = await stub.Challenge(
        pb.ChallengeRequest(flow_id=flow_id, idempotency_key=f"key-{login}", client=CLIENT)
    )
    assert first.channel == common_pb2.CHANNEL_SMS
    return flow_id, first


async def messages(server: Server) -> list[OutboxMessage]:
    async with server.app.read() as db:
        return list(await db.scalars(select(OutboxMessage).order_by(OutboxMessage.created_at)))


async def test_an_unconfirmed_sms_is_followed_by_one_counted_voice_call(
    settings: Settings, clock: FrozenClock, gateway: Gateway
) -> None:
    server = await start(settings, clock, gateway)
    dispatcher = Dispatcher(server.app)
    fallback = VoiceFallback(server.app)
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            flow_id, first = await sms_code(stub, server, "alice", "+33612345001")
            _, confirmed = await sms_code(stub, server, "bob", "+33612345002")
            assert await dispatcher.run_once() == 2  # both SMS sent
            # Bob's SMS is confirmed delivered by the gateway's receipt: no call for him.
            claim = receipts.Claim(
                uuid.UUID(confirmed.challenge_id), "sms", "http", Receipt.DELIVERED
            )
            assert await receipts.apply(server.app, claim, source="test") is not None

            clock.advance(AFTER_S - 1)
            assert await fallback.run_once() == 0  # not yet
            clock.advance(1)
            assert await fallback.run_once() == 1  # Alice's SMS: no receipt after AFTER_S
            assert await fallback.run_once() == 0  # and only once
            assert await dispatcher.run_once() == 1
            assert len(gateway.accepted) == 3
            call = gateway.texts[gateway.accepted[-1]]
            assert "Je répète" in call  # a voice text, on the same number

            # The backend asking again with its key hears of the call; the send was counted.
            again = await stub.Challenge(
                pb.ChallengeRequest(flow_id=flow_id, idempotency_key="key-alice", client=CLIENT)
            )
            assert again.channel == common_pb2.CHANNEL_VOICE
            assert again.masked_destination == first.masked_destination
            assert again.sends_remaining == first.sends_remaining - 1
            assert again.delivery_status == common_pb2.DELIVERY_STATUS_SENT
        async with server.app.read() as db:
            flow = await db.scalar(select(Flow).where(Flow.id == uuid.UUID(flow_id)))
        assert flow is not None and flow.send_count == 2 and flow.channel == "voice"
        channels = [(m.channel, m.status) for m in await messages(server)]
        assert channels.count(("voice", MessageStatus.SENT)) == 1
    finally:
        await dispatcher.close()
        await server.stop(grace=0)


@pytest.mark.parametrize(
    "caps",
    [
        pytest.param({"max_sends_per_flow": 1}, id="flow-send-cap"),
        pytest.param({"phone_sends_per_hour": 1}, id="number-hourly-cap"),
    ],
)
async def test_the_switch_respects_the_caps(
    settings: Settings, clock: FrozenClock, gateway: Gateway, caps: dict[str, int]
) -> None:
    server = await start(settings, clock, gateway, **caps)
    dispatcher = Dispatcher(server.app)
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            flow_id, _ = await sms_code(stub, server, "alice", "+33612345001")
            assert await dispatcher.run_once() == 1
            clock.advance(AFTER_S)
            assert await VoiceFallback(server.app).run_once() == 0
            assert await dispatcher.run_once() == 0  # no call queued
        assert [m.channel for m in await messages(server)] == ["sms"]
        async with server.app.read() as db:
            flow = await db.scalar(select(Flow).where(Flow.id == uuid.UUID(flow_id)))
        assert flow is not None and flow.send_count == 1 and flow.channel == "sms"
    finally:
        await dispatcher.close()
        await server.stop(grace=0)


async def test_refused_switches_never_hide_the_newer_ones(
    settings: Settings, clock: FrozenClock, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidates a switch refused stay candidates until their code expires: a page of
    them must not hide a newer SMS (before: one unordered page of BATCH rows, re-read every
    time). Pages of 2 here: two refused (their shared number at its hourly cap), then one due."""
    monkeypatch.setattr(voice_fallback_statements, "BATCH", 2)
    # A cap of 4 an hour lets 2 through at once (ratelimit.Limit.cap), then one per 30 min.
    server = await start(settings, clock, gateway, phone_sends_per_hour=4)
    dispatcher = Dispatcher(server.app)
    fallback = VoiceFallback(server.app)
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AuthServiceStub(channel)
            for login, phone in (
                ("alice", "+33612345001"),
                ("bob", "+33612345001"),  # the same number: its burst is then spent
                ("carol", "+33612345003"),
            ):
                await sms_code(stub, server, login, phone)
                assert await dispatcher.run_once() == 1
                clock.advance(1)  # sent one after the other
            clock.advance(AFTER_S)
            assert await fallback.run_once() == 1  # Carol's, behind the two refused
            assert await fallback.run_once() == 0
            assert await dispatcher.run_once() == 1
        voice = [m for m in await messages(server) if m.channel == "voice"]
        assert len(voice) == 1
    finally:
        await dispatcher.close()
        await server.stop(grace=0)

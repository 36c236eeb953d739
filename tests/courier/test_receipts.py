"""Delivery receipts on a real database (SQLite and PostgreSQL): the outbox's state machine in
every order a receipt and the send's own answer may come, and the signed webhook end to end: a
real gRPC server with its receipt listener, a real HTTP gateway that posts signed receipts back,
Challenge telling DELIVERED / UNDELIVERED (with voice next), forged, stale and malformed receipts
refused with nothing changed and nothing of them logged."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
import pytest
from courier.gateways import HttpGatewayServer, HttpRequest, free_port
from leaks import captured_events
from pydantic import SecretStr
from sqlalchemy import select
from support import CLIENT, MOBILE, aio_channel, open_login_flow

from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderName, Settings
from authsvc.courier import receipts
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.outbox import enqueue
from authsvc.courier.providers import DeliveryError, Provider
from authsvc.courier.templates import Rendered
from authsvc.db import MessageStatus, OutboxMessage, Receipt
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

SECRET = "shared-with-the-gateway"


# ---- the state machine, with a provider double (the order of events is the point) ------------


class Gateway:
    """A provider that fails the first `failures` calls, or waits for `release` to answer."""

    name = "http"  # what outbox.provider records for the channel's one http gateway

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.release: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        self.calls += 1
        self.called.set()
        if self.release is not None:
            await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise DeliveryError("no answer within 5 s")
        return f"gw-{self.calls}"


@pytest.fixture
async def app(settings: Settings, clock: FrozenClock) -> AsyncIterator[App]:
    configured = settings.model_copy(update={"sms_provider": ProviderName.HTTP})
    app = App.build(configured, clock)
    yield app
    await app.close()


async def queue(app: App, *, channel: str = "sms") -> uuid.UUID:
    async with app.write() as db:
        return enqueue(
            app,
            db,
            channel=channel,
            template="test",
            to="+33612340000",
            masked_to="+33 •••••••00",
            message=Rendered(text="code 123456", summary="code ••••", secrets=("123456",)),
            flow_id=None,
        )


async def row(app: App, message_id: uuid.UUID) -> OutboxMessage:
    async with app.read() as db:
        found = await db.scalar(select(OutboxMessage).where(OutboxMessage.id == message_id))
    assert found is not None
    return found


def claim(
    message_id: uuid.UUID,
    receipt: Receipt,
    *,
    channel: str = "sms",
    family: str = "http",
    provider_id: str | None = None,
) -> receipts.Claim:
    return receipts.Claim(message_id, channel, family, receipt, provider_id)


def providers(gateway: Provider) -> dict[str, Provider]:
    return {"sms": gateway, "voice": gateway, "email": gateway}


async def test_a_receipt_after_the_send_moves_sent_to_final_once(app: App) -> None:
    message_id = await queue(app)
    await Dispatcher(app, providers(Gateway())).run_once()
    sent = await row(app, message_id)
    assert (sent.status, sent.provider, sent.provider_message_id) == ("sent", "http", "gw-1")

    buffered = await receipts.apply(app, claim(message_id, Receipt.BUFFERED), source="t")
    assert buffered == MessageStatus.SENT  # on its way: noted, still sent
    assert (await row(app, message_id)).receipt == Receipt.BUFFERED
    delivered = claim(message_id, Receipt.DELIVERED, provider_id="gw-1")
    assert await receipts.apply(app, delivered, source="t") == MessageStatus.DELIVERED
    # The same receipt again, or a contradicting one: final is final, nothing changes.
    assert await receipts.apply(app, delivered, source="t") is None
    assert await receipts.apply(app, claim(message_id, Receipt.UNDELIVERED), source="t") is None
    done = await row(app, message_id)
    assert (done.status, done.receipt) == (MessageStatus.DELIVERED, Receipt.DELIVERED)
    assert done.payload_sealed is None and done.receipt_at is not None


async def test_a_receipt_before_the_gateways_answer_is_applied_when_the_send_lands(
    app: App,
) -> None:
    message_id = await queue(app)
    gateway = Gateway()
    gateway.release = asyncio.Event()
    dispatcher = Dispatcher(app, providers(gateway))
    sending = asyncio.create_task(dispatcher.run_once())
    await gateway.called.wait()  # the gateway has it; its answer is not in yet
    assert (await row(app, message_id)).status == MessageStatus.SENDING
    early = claim(message_id, Receipt.UNDELIVERED)
    assert await receipts.apply(app, early, source="t") == MessageStatus.SENDING
    gateway.release.set()
    assert await sending == 1
    landed = await row(app, message_id)
    assert landed.status == MessageStatus.UNDELIVERED and landed.payload_sealed is None
    assert await receipts.apply(app, early, source="t") is None  # repeated: nothing changes


async def test_delivered_after_a_timed_out_attempt_ends_the_message_unsent_again(
    app: App, clock: FrozenClock
) -> None:
    message_id = await queue(app)
    gateway = Gateway(failures=1)  # our side timed out, yet the SMS went out
    dispatcher = Dispatcher(app, providers(gateway))
    await dispatcher.run_once()
    assert (await row(app, message_id)).status == MessageStatus.FAILED
    # Only "delivered" settles a failed message: anything else waits for the retry.
    assert await receipts.apply(app, claim(message_id, Receipt.UNDELIVERED), source="t") is None
    delivered = await receipts.apply(app, claim(message_id, Receipt.DELIVERED), source="t")
    assert delivered == MessageStatus.DELIVERED
    assert (await row(app, message_id)).payload_sealed is None
    clock.advance(60)  # well past the retry's backoff
    assert await dispatcher.run_once() == 0
    assert gateway.calls == 1  # the code was never sent twice


@pytest.mark.parametrize("word", [Receipt.UNDELIVERED, Receipt.DELIVERED])
async def test_a_receipt_noted_during_a_failed_attempt_speaks_for_that_attempt_only(
    app: App, clock: FrozenClock, word: Receipt
) -> None:
    """Attack review: a receipt that came while attempt 1 was in flight, before attempt 1
    timed out on our side. "undelivered" was attempt 1's word: attempt 2's success is recorded
    sent (before, undelivered: voice offered, cooldown skipped). "delivered": the phone has the
    code, the message ends delivered and is never sent again (before, sent twice)."""
    message_id = await queue(app)
    gateway = Gateway(failures=1)
    gateway.release = asyncio.Event()
    dispatcher = Dispatcher(app, providers(gateway))
    sending = asyncio.create_task(dispatcher.run_once())
    await gateway.called.wait()
    assert await receipts.apply(app, claim(message_id, word), source="t") == MessageStatus.SENDING
    gateway.release.set()
    await sending
    clock.advance(60)  # past the retry's backoff
    gateway.release = None
    await dispatcher.run_once()
    ended = await row(app, message_id)
    if word is Receipt.DELIVERED:
        assert (ended.status, gateway.calls) == (MessageStatus.DELIVERED, 1)
        assert ended.payload_sealed is None
    else:
        assert (ended.status, gateway.calls) == (MessageStatus.SENT, 2)
        assert ended.receipt is None


async def test_unknown_foreign_and_unsent_messages_change_nothing(app: App) -> None:
    queued = await queue(app)
    email = await queue(app, channel="email")
    sent = await queue(app)
    dispatcher = Dispatcher(app, providers(Gateway()))
    await dispatcher.run_once()  # every message is sent
    async with app.write() as db:  # but `queued` stays queued: put it back
        message = await db.get(OutboxMessage, queued)
        assert message is not None
        message.status = MessageStatus.QUEUED
    with captured_events() as events:
        for stranger in (
            claim(uuid.uuid4(), Receipt.DELIVERED),  # unknown
            claim(queued, Receipt.DELIVERED),  # never handed over
            claim(email, Receipt.DELIVERED),  # another channel's message
            claim(sent, Receipt.DELIVERED, family="kannel"),  # another gateway's
            claim(sent, Receipt.DELIVERED, provider_id="someone-else"),  # another provider id
        ):
            assert await receipts.apply(app, stranger, source="t") is None
    assert [event["event"] for event in events] == ["receipt_ignored"] * 5
    assert (await row(app, queued)).status == MessageStatus.QUEUED
    for message_id in (email, sent):
        untouched = await row(app, message_id)
        assert (untouched.status, untouched.receipt) == (MessageStatus.SENT, None)


# ---- end to end: gRPC server, receipt listener, a real HTTP gateway posting receipts -----------


class ReceiptPoster:
    """Makes the test gateway post a signed receipt back for each accepted message, with the
    scripted words ("delivered" once the script runs out)."""

    def __init__(self, url: str, clock: FrozenClock, secret: str = SECRET) -> None:
        self.url = url
        self.clock = clock
        self.secret = secret
        self.words: deque[str] = deque()
        self.answers: list[int] = []

    def __call__(self, request: HttpRequest) -> None:
        word = self.words.popleft() if self.words else "delivered"
        body = json.dumps(
            {"message_id": request.headers["x-authsvc-message-id"], "status": word}
        ).encode()
        self.answers.append(self.post(body).status_code)

    def signed(
        self, body: bytes, *, secret: str | None = None, at: float | None = None
    ) -> dict[str, str]:
        timestamp = str(int(self.clock.now().timestamp() if at is None else at))
        signature = receipts.webhook_signature((secret or self.secret).encode(), timestamp, body)
        return {"X-Authsvc-Timestamp": timestamp, "X-Authsvc-Signature": signature}

    def post(self, body: bytes) -> httpx.Response:
        """From the gateway's thread."""
        return httpx.post(self.url, content=body, headers=self.signed(body), timeout=5)

    async def apost(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        at: float | None = None,
        signed: bool = True,
        url: str | None = None,
    ) -> int:
        """From the test, on the loop that also serves the listener."""
        headers = self.signed(body, secret=secret, at=at) if signed else {}
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(url or self.url, content=body, headers=headers)
        return response.status_code


@pytest.fixture
def gateway() -> Iterator[HttpGatewayServer]:
    with HttpGatewayServer() as server:
        yield server


@pytest.fixture
async def receipt_server(
    settings: Settings, clock: FrozenClock, gateway: HttpGatewayServer
) -> AsyncIterator[Server]:
    port = free_port()
    configured = settings.model_copy(
        update={
            "sms_provider": ProviderName.HTTP,
            "voice_provider": ProviderName.HTTP,
            "sms_http": HttpGateway(url=gateway.url, hmac_secret=SecretStr(SECRET)),
            "voice_http": HttpGateway(url=gateway.url, hmac_secret=SecretStr(SECRET)),
            "delivery_wait_s": 3.0,
            "receipts_listen": f"127.0.0.1:{port}",
        }
    )
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
def poster(receipt_server: Server, gateway: HttpGatewayServer, clock: FrozenClock) -> ReceiptPoster:
    assert receipt_server.receipts is not None
    poster = ReceiptPoster(
        f"http://127.0.0.1:{receipt_server.receipts.port}/receipts/http/sms", clock
    )
    gateway.on_accepted = poster
    return poster


@pytest.fixture
async def stub(receipt_server: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{receipt_server.port}") as channel:
        yield pb_grpc.AuthServiceStub(channel)


async def settled(server: Server, challenge_id: str) -> OutboxMessage:
    """The challenge's message once a receipt settled it (the gateway posts from its thread)."""
    for _ in range(200):
        async with server.app.read() as db:
            message = await db.get(OutboxMessage, uuid.UUID(challenge_id))
        if message is not None and message.receipt in (Receipt.DELIVERED, Receipt.UNDELIVERED):
            return message
        await asyncio.sleep(0.025)
    raise AssertionError("no receipt recorded")


async def test_the_gateways_signed_receipt_makes_challenge_answer_delivered(
    stub: Stub, receipt_server: Server, gateway: HttpGatewayServer, poster: ReceiptPoster
) -> None:
    flow_id = await open_login_flow(stub, receipt_server)
    request = pb.ChallengeRequest(flow_id=flow_id, idempotency_key="k-1", client=CLIENT)
    first = await stub.Challenge(request)
    assert first.delivery_status in (
        common_pb2.DELIVERY_STATUS_SENT,
        common_pb2.DELIVERY_STATUS_DELIVERED,  # the receipt may beat Challenge's own read
    )
    message = await settled(receipt_server, first.challenge_id)
    assert message.status == MessageStatus.DELIVERED and message.provider == "http"
    assert poster.answers == [204]

    again = await stub.Challenge(request)  # asking again: the same challenge, nothing sent
    assert again.challenge_id == first.challenge_id
    assert again.delivery_status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert again.next_channel == common_pb2.CHANNEL_UNSPECIFIED
    assert len(gateway.requests) == 1


async def test_undelivered_sms_offers_voice_at_once_without_resetting_the_flows_counts(
    stub: Stub, receipt_server: Server, gateway: HttpGatewayServer, poster: ReceiptPoster
) -> None:
    poster.words.append("undelivered")
    flow_id = await open_login_flow(stub, receipt_server)
    request = pb.ChallengeRequest(flow_id=flow_id, idempotency_key="k-1", client=CLIENT)
    first = await stub.Challenge(request)
    await settled(receipt_server, first.challenge_id)
    again = await stub.Challenge(request)
    assert again.delivery_status == common_pb2.DELIVERY_STATUS_UNDELIVERED
    assert again.next_channel == common_pb2.CHANNEL_VOICE
    assert again.sends_remaining == first.sends_remaining

    # No resend cooldown after an undelivered SMS; the send is counted like any other.
    voice = await stub.Challenge(
        pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_VOICE, client=CLIENT)
    )
    assert voice.channel == common_pb2.CHANNEL_VOICE
    assert voice.sends_remaining == first.sends_remaining - 1
    assert voice.masked_destination == first.masked_destination  # the same number
    assert gateway.requests[-1].json()["channel"] == "voice"
    assert gateway.requests[-1].json()["to"] == MOBILE
    assert "Je répète" in gateway.requests[-1].json()["text"]


async def test_forged_stale_and_malformed_receipts_are_refused_and_change_nothing(
    stub: Stub,
    receipt_server: Server,
    gateway: HttpGatewayServer,
    poster: ReceiptPoster,
    clock: FrozenClock,
) -> None:
    gateway.on_accepted = None  # this test posts the receipts itself
    flow_id = await open_login_flow(stub, receipt_server)
    sent = await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
    assert sent.delivery_status == common_pb2.DELIVERY_STATUS_SENT
    body = json.dumps({"message_id": sent.challenge_id, "status": "undelivered"}).encode()
    now = clock.now().timestamp()
    window = receipt_server.app.settings.receipts_max_age_s
    with captured_events() as events:
        answers = [
            await poster.apost(body, secret="not-the-secret"),
            await poster.apost(body, at=now - window - 1),  # replayed too late
            await poster.apost(body, at=now + window + 1),
            await poster.apost(b"{not json"),
            await poster.apost(json.dumps({"message_id": "x", "status": "delivered"}).encode()),
            await poster.apost(json.dumps({"message_id": sent.challenge_id}).encode()),
            await poster.apost(body, signed=False),
            # No gateway there: answered as a bad signature (a stranger learns nothing of
            # which channels have a signed gateway).
            await poster.apost(body, url=poster.url.replace("/sms", "/fax")),
        ]
    assert answers == [401, 401, 401, 400, 400, 400, 401, 401]
    async with receipt_server.app.read() as db:
        message = await db.get(OutboxMessage, uuid.UUID(sent.challenge_id))
    assert message is not None
    assert (message.status, message.receipt) == (MessageStatus.SENT, None)
    refused = [event for event in events if event["event"] == "receipt_refused"]
    assert len(refused) == len(answers)
    logged = json.dumps(events, default=str)
    assert sent.challenge_id not in logged and "undelivered" not in logged and SECRET not in logged

    # Within the window, a genuine receipt still counts (and its replay changes nothing).
    assert await poster.apost(body) == 204
    assert await poster.apost(body) == 204
    again = await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
    assert again.channel == common_pb2.CHANNEL_SMS  # a new code at once: no cooldown
    async with receipt_server.app.read() as db:
        first = await db.get(OutboxMessage, uuid.UUID(sent.challenge_id))
    assert first is not None and first.status == MessageStatus.UNDELIVERED


async def test_a_code_retried_past_its_lifetime_is_never_sent(
    settings: Settings, clock: FrozenClock, gateway: HttpGatewayServer
) -> None:
    quiet = settings.model_copy(
        update={
            "dispatcher_enabled": False,
            "sms_provider": ProviderName.HTTP,
            "sms_http": HttpGateway(url=gateway.url),
        }
    )
    server = await create_server(quiet, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            flow_id = await open_login_flow(pb_grpc.AuthServiceStub(channel), server)
            queued = await pb_grpc.AuthServiceStub(channel).Challenge(
                pb.ChallengeRequest(flow_id=flow_id, client=CLIENT)
            )
        gateway.script.set("transient")
        dispatcher = Dispatcher(server.app)
        assert await dispatcher.run_once() == 1
        async with server.app.read() as db:
            failed = await db.get(OutboxMessage, uuid.UUID(queued.challenge_id))
        assert failed is not None and failed.status == MessageStatus.FAILED
        clock.advance(quiet.code_ttl_s)  # the retry is due only once the code is dead
        assert await dispatcher.run_once() == 1
        await dispatcher.close()
        async with server.app.read() as db:
            late = await db.get(OutboxMessage, uuid.UUID(queued.challenge_id))
        assert late is not None
        assert late.status == MessageStatus.ABANDONED and late.payload_sealed is None
        assert late.last_error == "the code expired before delivery"
        assert len(gateway.requests) == 1  # the failed first attempt only
    finally:
        await server.stop(grace=0)

"""A full login whose SMS goes through the `http` provider to a gateway started by the test:
Challenge reports where delivery stands (sent, or failed when the gateway refuses), the gateway
receives one signed request per code, the same idempotency key sends nothing new, and nothing
but a masked destination and a code-free text remains once the message is out."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from courier.gateways import HttpGatewayServer
from pydantic import SecretStr
from sqlalchemy import select
from support import CLIENT, MOBILE, aio_channel, open_login_flow

from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderName, Settings
from authsvc.courier.dispatcher import Dispatcher
from authsvc.db import MessageStatus, OutboxMessage
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

SECRET = "shared-with-the-gateway"


@pytest.fixture
def gateway() -> Iterator[HttpGatewayServer]:
    with HttpGatewayServer() as server:
        yield server


@pytest.fixture
async def http_server(
    settings: Settings, clock: FrozenClock, gateway: HttpGatewayServer
) -> AsyncIterator[Server]:
    configured = settings.model_copy(
        update={
            "sms_provider": ProviderName.HTTP,
            "voice_provider": ProviderName.HTTP,
            "sms_http": HttpGateway(url=gateway.url, hmac_secret=SecretStr(SECRET)),
            "voice_http": HttpGateway(url=gateway.url, hmac_secret=SecretStr(SECRET)),
            "delivery_wait_s": 3.0,  # generous on a loaded CI machine; answered at once here
        }
    )
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def http_stub(http_server: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{http_server.port}") as channel:
        yield pb_grpc.AuthServiceStub(channel)


async def outbox(server: Server) -> list[OutboxMessage]:
    async with server.app.read() as db:
        return list(await db.scalars(select(OutboxMessage)))


async def test_full_login_through_the_http_gateway(
    http_stub: Stub, http_server: Server, gateway: HttpGatewayServer
) -> None:
    flow_id = await open_login_flow(http_stub, http_server)
    challenge = pb.ChallengeRequest(flow_id=flow_id, idempotency_key="retry-1", client=CLIENT)
    sent = await http_stub.Challenge(challenge)
    assert sent.delivery_status == common_pb2.DELIVERY_STATUS_SENT
    assert sent.masked_destination == "+33 •••••••78"

    [request] = gateway.requests
    body = request.json()
    assert body["to"] == MOBILE and body["channel"] == "sms"
    signature = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-authsvc-signature"] == f"sha256={signature}"
    match = re.search(r"\n\n@peps\.cnracl\.example #(\d{6})$", body["text"])
    assert match, body["text"]

    again = await http_stub.Challenge(challenge)  # a retried call: same challenge, no new SMS
    assert again.challenge_id == sent.challenge_id
    assert again.delivery_status == common_pb2.DELIVERY_STATUS_SENT
    assert len(gateway.requests) == 1

    verified = await http_stub.Verify(
        pb.VerifyRequest(flow_id=flow_id, code=match.group(1), client=CLIENT)
    )
    assert verified.login.session.token

    [message] = await outbox(http_server)
    assert message.status == MessageStatus.SENT and message.payload_sealed is None
    assert message.provider_message_id == "gw-1"
    assert message.summary is not None and match.group(1) not in message.summary
    assert message.summary.endswith("#••••") and MOBILE not in message.summary


async def test_a_refused_sms_is_reported_failed_and_a_new_challenge_can_follow(
    http_stub: Stub, http_server: Server, gateway: HttpGatewayServer, clock: FrozenClock
) -> None:
    gateway.script.set("permanent")
    flow_id = await open_login_flow(http_stub, http_server)
    refused = await http_stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
    assert refused.delivery_status == common_pb2.DELIVERY_STATUS_FAILED
    [message] = await outbox(http_server)
    assert message.status == MessageStatus.ABANDONED and message.payload_sealed is None
    assert message.last_error is not None and "[number]" in message.last_error
    assert "12 34 56 78" not in message.last_error  # the gateway quoted the number

    # No 30 s wait after a failed delivery: the user can ask again at once (voice, here).
    retry = await http_stub.Challenge(
        pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_VOICE, client=CLIENT)
    )
    assert retry.delivery_status == common_pb2.DELIVERY_STATUS_SENT
    assert retry.sends_remaining == refused.sends_remaining - 1
    assert gateway.requests[-1].json()["channel"] == "voice"
    assert "Je répète" in gateway.requests[-1].json()["text"]


async def test_a_code_past_its_lifetime_is_abandoned_unsent(
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
            stub = pb_grpc.AuthServiceStub(channel)
            flow_id = await open_login_flow(stub, server)
            queued = await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
        assert queued.delivery_status == common_pb2.DELIVERY_STATUS_QUEUED
        clock.advance(quiet.code_ttl_s)  # no dispatcher ran while the code lived
        dispatcher = Dispatcher(server.app)
        assert await dispatcher.run_once() == 1
        await dispatcher.close()
        [message] = await outbox(server)
        assert message.status == MessageStatus.ABANDONED and message.payload_sealed is None
        assert message.last_error == "the code expired before delivery"
        assert gateway.requests == []
    finally:
        await server.stop(grace=0)

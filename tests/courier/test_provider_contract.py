"""Every real provider honours one contract, checked against a real server started by the test:
accepted -> its id; refused -> permanent DeliveryError; no answer in time -> retryable
DeliveryError within the timeout; through the dispatcher, a transient failure is retried and then
sent, and five failures abandon the message (payload purged either way).

`http` is checked for SMS (a JSON gateway, signed), `smtp` for email (aiosmtpd requiring
STARTTLS and authentication, certificate checked against the test's CA). Kannel has its own
end-to-end test against a real Kannel (test_kannel.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from courier.gateways import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpGatewayServer,
    Script,
    SmtpGatewayServer,
    self_signed,
)
from pydantic import SecretStr
from sqlalchemy import select
from support import START

from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderName, Settings, SmtpSecurity
from authsvc.courier.dispatcher import MAX_ATTEMPTS, Dispatcher
from authsvc.courier.outbox import enqueue
from authsvc.courier.providers import (
    DeliveryError,
    MessageProvider,
    Outgoing,
    build_providers,
    classify_http_status,
)
from authsvc.courier.templates import Rendered
from authsvc.db import MessageStatus, OutboxMessage

TIMEOUT_S = 0.5
HMAC_SECRET = "gateway-shared-secret"
TO = {"sms": "+33612345678", "email": "alice@example.fr"}


@dataclass
class Harness:
    kind: str
    channel: str
    settings: Settings
    script: Script
    http: HttpGatewayServer | None = None
    smtp: SmtpGatewayServer | None = None

    def delivered(self) -> list[tuple[str, str]]:
        """(destination, text) of every message the gateway received."""
        if self.http is not None:
            bodies = [request.json() for request in self.http.requests]
            return [(body["to"], body["text"]) for body in bodies]
        assert self.smtp is not None
        return [(mail.rcpt_tos[0], _plain(mail.message)) for mail in self.smtp.mails]

    def provider(self) -> MessageProvider:
        provider = build_providers(self.settings)[self.channel]
        assert isinstance(provider, MessageProvider)
        return provider


def _plain(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            text = payload.decode(part.get_content_charset() or "utf-8")
            return text.replace("\r\n", "\n").removesuffix("\n")
    raise AssertionError("no text/plain part")


@pytest.fixture(params=["http", "smtp"])
def harness(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[Harness]:
    if request.param == "http":
        with HttpGatewayServer() as server:
            gateway = HttpGateway(
                url=server.url,
                headers={"Authorization": SecretStr("Bearer api-key")},
                body={"to": "$to", "text": "$text", "channel": "$channel", "ref": "$message_id"},
                timeout_s=TIMEOUT_S,
                hmac_secret=SecretStr(HMAC_SECRET),
            )
            configured = settings.model_copy(
                update={"sms_provider": ProviderName.HTTP, "sms_http": gateway}
            )
            yield Harness("http", "sms", configured, server.script, http=server)
        return
    cert, key = self_signed(tmp_path)
    with SmtpGatewayServer(cert, key) as server:
        configured = settings.model_copy(
            update={
                "email_provider": ProviderName.SMTP,
                "smtp_host": "127.0.0.1",
                "smtp_port": server.port,
                "smtp_security": SmtpSecurity.STARTTLS,
                "smtp_username": SMTP_USER,
                "smtp_password": SecretStr(SMTP_PASSWORD),
                "smtp_ca_file": cert,
                "smtp_timeout_s": TIMEOUT_S,
            }
        )
        yield Harness("smtp", "email", configured, server.script, smtp=server)


def outgoing(channel: str, text: str = "PEP's : votre code est 424242.") -> Outgoing:
    return Outgoing(
        id=uuid.uuid4(),
        channel=channel,
        to=TO[channel],
        text=text,
        created_at=START,
        attempt=1,
        subject="PEP's : votre code" if channel == "email" else None,
        html="<p>code</p>" if channel == "email" else None,
    )


async def test_accepted_message_returns_the_provider_id(harness: Harness) -> None:
    provider = harness.provider()
    message = outgoing(harness.channel, "PEP's : votre code est 424242. à bientôt")
    try:
        provider_id = await provider.deliver(message)
    finally:
        await provider.aclose()
    assert harness.delivered() == [(TO[harness.channel], message.text)]
    if harness.http is not None:
        [request] = harness.http.requests
        assert provider_id == "gw-1"
        assert request.method == "POST"
        assert request.json() == {
            "to": TO["sms"],
            "text": message.text,
            "channel": "sms",
            "ref": str(message.id),
        }
        assert request.headers["authorization"] == "Bearer api-key"
        assert request.headers["x-authsvc-message-id"] == str(message.id)
        expected = hmac.new(HMAC_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-authsvc-signature"] == f"sha256={expected}"
    else:
        assert harness.smtp is not None
        [mail] = harness.smtp.mails
        assert mail.message["Subject"] == "PEP's : votre code"
        assert mail.message["Message-ID"] == provider_id
        assert mail.rcpt_tos == [TO["email"]]
        types = [part.get_content_type() for part in mail.message.walk()]
        assert types == ["multipart/alternative", "text/plain", "text/html"]


async def test_refusal_is_a_permanent_failure(harness: Harness) -> None:
    harness.script.set("permanent")
    provider = harness.provider()
    with pytest.raises(DeliveryError) as refused:
        await provider.deliver(outgoing(harness.channel))
    await provider.aclose()
    assert refused.value.permanent
    if harness.smtp is not None:
        assert harness.smtp.mails == []


async def test_no_answer_in_time_is_retryable_and_bounded(harness: Harness) -> None:
    harness.script.set("hang")
    provider = harness.provider()
    # Bounded by the provider's own timeout: past 3 times that, wait_for raises TimeoutError
    # instead of the DeliveryError expected (a hang guard, not a measurement).
    with pytest.raises(DeliveryError) as late:
        await asyncio.wait_for(provider.deliver(outgoing(harness.channel)), TIMEOUT_S * 3)
    await provider.aclose()
    assert not late.value.permanent


@pytest.fixture
async def app(harness: Harness, clock: FrozenClock) -> AsyncIterator[App]:
    app = App.build(harness.settings, clock)
    yield app
    await app.close()


async def queue_one(app: App, channel: str) -> None:
    async with app.write() as db:
        enqueue(
            app,
            db,
            channel=channel,
            template="test",
            to=TO[channel],
            masked_to="masked",
            message=Rendered(
                text="PEP's : votre code est 424242.",
                summary="PEP's : votre code est ••••.",
                secrets=("424242",),
                subject="PEP's : votre code" if channel == "email" else None,
            ),
            flow_id=None,
        )


async def only_message(app: App) -> OutboxMessage:
    async with app.read() as db:
        [message] = list(await db.scalars(select(OutboxMessage)))
    return message


async def test_transient_failure_is_retried_then_sent(
    harness: Harness, app: App, clock: FrozenClock
) -> None:
    harness.script.set("transient", "ok")
    dispatcher = Dispatcher(app)
    await queue_one(app, harness.channel)
    assert await dispatcher.run_once() == 1
    message = await only_message(app)
    assert (message.status, message.attempts) == (MessageStatus.FAILED, 1)
    assert message.last_error and message.payload_sealed is not None
    assert await dispatcher.run_once() == 0  # not before its backoff
    clock.advance(2)
    assert await dispatcher.run_once() == 1
    await dispatcher.close()
    message = await only_message(app)
    assert (message.status, message.attempts) == (MessageStatus.SENT, 2)
    assert message.payload_sealed is None and message.provider_message_id
    assert message.summary == "PEP's : votre code est ••••." or harness.channel == "email"
    if harness.http is not None:  # both attempts carried the same reference
        references = {r.headers["x-authsvc-message-id"] for r in harness.http.requests}
        assert len(harness.http.requests) == 2 and references == {str(message.id)}
    else:
        assert len(harness.delivered()) == 1


async def test_five_failures_abandon_the_message(
    harness: Harness, app: App, clock: FrozenClock
) -> None:
    harness.script.set(*["transient"] * MAX_ATTEMPTS, "ok")
    dispatcher = Dispatcher(app)
    await queue_one(app, harness.channel)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert await dispatcher.run_once() == 1
        clock.advance(2.0**attempt)
    await dispatcher.close()
    message = await only_message(app)
    assert (message.status, message.attempts) == (MessageStatus.ABANDONED, MAX_ATTEMPTS)
    assert message.payload_sealed is None and message.last_error
    assert await dispatcher.run_once() == 0
    if harness.smtp is not None:
        assert harness.smtp.mails == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *[(200, None), (202, None), (400, True), (401, True), (404, True)],
        *[(408, False), (429, False), (500, False), (502, False), (503, False)],
    ],
)
def test_http_status_classification(status: int, expected: bool | None) -> None:
    assert classify_http_status(status) is expected

"""Every template, on every channel, through real gateways whose errors quote what they were sent:
no code, token, phone number or address in the logs nor in any column.

The gateways are real servers on loopback (tests/courier/gateways.py): an HTTP gateway for SMS
and voice (JSON body echoed), the same answering Kannel's sendsms GET (query string echoed,
percent-encoded), and aiosmtpd for email (a content filter quoting the recipient and the text).
Each message is first refused with an error to be retried (the `message_retry` log line and
`last_error`), then for good (`message_abandoned`); the secrets are of every shape, a token
without any digit included. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from courier.gateways import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpGatewayServer,
    SmtpGatewayServer,
    self_signed,
)
from leaks import Logs, capturing, dump, find_leaks, leaks_at_rest, phone_forms
from pydantic import SecretStr
from sqlalchemy import select
from support import MOBILE

from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderName, Settings, SmtpSecurity
from authsvc.courier import templates
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.outbox import enqueue
from authsvc.db import MessageStatus, OutboxMessage

ADDRESS = "alice.martin@example.fr"
SECRETS = {
    "digits": "482910",
    "token with digits": "tok-Z9q8w7e6r5t4y3u2",
    "token without a digit": "kPqRsTuVwXyZaBcDeFgHiJkLmNoPqRsTuVwXyZ_-abc",
}
FIELDS = {
    "activation": {"display_name": "Alice", "activation_token": ""},
    "contact_changed": {"display_name": "Alice", "what": "numéro de téléphone"},
    "password_changed": {"display_name": "Alice"},
    "new_admin": {"display_name": "Alice", "admin_name": "Bob Martin"},
    "code_failures": {"display_name": "Alice"},
    "wrong_codes": {"display_name": "Alice"},
    "federated_link_proposed": {"display_name": "Alice", "admin_name": "Bob Martin"},
    "email_verification": {"display_name": "Alice", "code": "", "minutes": "5"},
    "factor_removed": {"display_name": "Alice", "factor_name": "Work phone", "by": "par vous"},
    "passkey_removed": {"display_name": "Alice", "factor_name": "Laptop", "by": "par vous"},
    "passkey_cloned": {"display_name": "Alice", "factor_name": "Laptop"},
    "factor_added": {"display_name": "Alice", "when": "03/12/2026 à 17:49 (UTC)"},
    "passkey_added": {"display_name": "Alice", "when": "03/12/2026 à 17:49 (UTC)"},
}


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Logs]:
    for logs in capturing(caplog, capfd):
        # aiosmtpd runs in this process only because it is the test's gateway: its debug lines
        # are the gateway's own record of what it received, not the service's logs.
        caplog.set_level(logging.WARNING, logger="mail.log")
        yield logs


@dataclass
class Gateways:
    http: HttpGatewayServer
    smtp: SmtpGatewayServer
    settings: Settings


@pytest.fixture(params=["http", "kannel"], ids=["sms-http", "sms-kannel"])
def gateways(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[Gateways]:
    cert, key = self_signed(tmp_path)
    with HttpGatewayServer() as http, SmtpGatewayServer(cert, key) as smtp:
        sms: dict[str, object] = (
            {"sms_provider": ProviderName.HTTP, "sms_http": HttpGateway(url=http.url)}
            if request.param == "http"
            else {
                "sms_provider": ProviderName.KANNEL,
                "kannel_url": http.url,
                "kannel_password": SecretStr("kannel-secret"),
            }
        )
        configured = settings.model_copy(
            update={
                **sms,
                "voice_provider": ProviderName.HTTP,
                "voice_http": HttpGateway(url=http.url),
                "email_provider": ProviderName.SMTP,
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "smtp_security": SmtpSecurity.STARTTLS,
                "smtp_username": SMTP_USER,
                "smtp_password": SecretStr(SMTP_PASSWORD),
                "smtp_ca_file": cert,
            }
        )
        yield Gateways(http, smtp, configured)


@pytest.fixture
async def app(gateways: Gateways, clock: FrozenClock) -> AsyncIterator[App]:
    app = App.build(gateways.settings, clock)
    yield app
    await app.close()


def every_message(secret: str) -> list[tuple[str, str, templates.Rendered]]:
    """(channel, template, message) for every template, `secret` as its code or token."""
    messages = [
        (
            channel,
            f"{purpose}_code_{channel}",
            templates.code_message(
                channel,
                purpose=purpose,
                code=secret,
                minutes=5,
                service="PEP's",
                domain="peps.cnracl.example",
            ),
        )
        for channel in templates.CHANNELS
        for purpose in templates.PURPOSES
    ]
    for kind in templates.EMAIL_KINDS:
        fields = {
            name: secret if name in templates.SECRET_FIELDS else value
            for name, value in FIELDS[kind].items()
        }
        messages.append(("email", kind, templates.email(kind, service="PEP's", **fields)))
    return messages


def secret_forms(secret: str) -> dict[str, str]:
    return {
        "secret": secret,
        "secret (read aloud)": ", ".join(secret),
        "secret (spaced)": " ".join(secret),
        **phone_forms(),
        "address": ADDRESS,
    }


@pytest.mark.parametrize("secret", list(SECRETS.values()), ids=list(SECRETS))
async def test_gateways_quoting_every_message_leave_no_secret_behind(
    app: App, gateways: Gateways, clock: FrozenClock, logs: Logs, secret: str
) -> None:
    messages = every_message(secret)
    assert len(messages) == 3 * len(templates.PURPOSES) + len(templates.EMAIL_KINDS)
    async with app.write() as db:
        for channel, template, message in messages:
            to = ADDRESS if channel == "email" else MOBILE
            enqueue(
                app,
                db,
                channel=channel,
                template=template,
                to=to,
                masked_to="m",
                message=message,
                flow_id=None,
            )
    count = len(messages)
    dispatcher = Dispatcher(app)
    try:
        for outcome in ("echo-transient", "echo"):  # retried first, then refused for good
            gateways.http.script.set(*[outcome] * count)
            gateways.smtp.script.set(*[outcome] * count)
            assert await dispatcher.run_once() == count
            clock.advance(3)
    finally:
        await dispatcher.close()

    # Not vacuous: the gateways were sent the secrets and quoted them back.
    sent = [request.body.decode() + request.path for request in gateways.http.requests]
    assert len(sent) == 2 * (count - len(templates.EMAIL_KINDS) - len(templates.PURPOSES))
    assert any(", ".join(secret) in text for text in sent)  # the voice reads it aloud
    async with app.read() as db:
        rows = list(await db.scalars(select(OutboxMessage)))
    assert {MessageStatus(row.status) for row in rows} == {MessageStatus.ABANDONED}
    assert all(row.last_error and row.payload_sealed is None for row in rows)
    assert all("refused" in (row.last_error or "") for row in rows), [r.last_error for r in rows]
    events = [event["event"] for event in logs.events]
    assert events.count("message_retry") == count and events.count("message_abandoned") == count

    forms = secret_forms(secret)
    assert find_leaks("the logs", logs.everything(), forms) == []
    assert leaks_at_rest(await dump(app), gateways.settings, forms) == []
    carrying = [row for row in rows if templates.MASK in (row.summary or "")]
    assert len(carrying) == 3 * len(templates.PURPOSES) + 2  # codes, activation, verification


async def test_a_delivered_message_keeps_only_its_summary(
    app: App, gateways: Gateways, settings: Settings
) -> None:
    """Delivered this time: the digit-free token is in no column (the summary used to keep any
    token without a digit)."""
    secret = SECRETS["token without a digit"]
    async with app.write() as db:
        for channel, template, message in every_message(secret):
            to = ADDRESS if channel == "email" else MOBILE
            enqueue(
                app,
                db,
                channel=channel,
                template=template,
                to=to,
                masked_to="m",
                message=message,
                flow_id=None,
            )
    dispatcher = Dispatcher(app)
    try:
        assert await dispatcher.run_once() == len(every_message(secret))
    finally:
        await dispatcher.close()
    async with app.read() as db:
        rows = list(await db.scalars(select(OutboxMessage)))
    assert {MessageStatus(row.status) for row in rows} == {MessageStatus.SENT}
    assert any(secret in mail.message.as_string() for mail in gateways.smtp.mails)
    assert leaks_at_rest(await dump(app), gateways.settings, secret_forms(secret)) == []

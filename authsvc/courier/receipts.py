"""Delivery receipts: what a gateway's callback says, whether to believe it, and its effect.

Two forms, both served by the receipt listener (courier/receipt_listener.py):

- Generic signed webhook of an `http` gateway, `POST /receipts/http/<channel>`: a JSON body
  `{"message_id": "<the X-Authsvc-Message-Id it was given>", "status": "delivered" |
  "undelivered" | "buffered", "provider_message_id": "<optional, its own id>"}`, a header
  `X-Authsvc-Timestamp: <unix seconds>` and `<signature_header>: sha256=<hex HMAC-SHA-256 of
  "<timestamp>." + body>` with the channel's gateway secret (AUTHSVC_<CHANNEL>_HTTP hmac_secret,
  the one that signs our requests to it). The timestamp is signed with the body, so a captured
  receipt cannot be replayed once outside the window (AUTHSVC_RECEIPTS_MAX_AGE_S), and within it
  a replay changes nothing (receipts are idempotent).
- Kannel's `dlr-url`, `GET /receipts/kannel?id=<our id>&token=<receipt token>&status=<%d>`:
  the token is a keyed digest of the message id (Keys.receipt_token), compared in constant time.
  Kannel's types: 1 delivered to the phone; 2 not delivered to the phone, 16 refused by the
  SMSC: undelivered; 4 queued at the SMSC, 8 accepted by the SMSC: buffered.

A bad signature, a stale timestamp, a bad token or a malformed receipt is refused (4xx) and
logged without its payload; nothing changes. A receipt for a message that is unknown, of another
channel or gateway, or already final changes nothing either (statements/receipts.py) and is
logged; it gets the same answer as an applied one, so the answer tells a caller nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

import structlog

from authsvc.app import App
from authsvc.config import HttpGateway, ProviderName
from authsvc.courier import outcomes
from authsvc.db import MessageStatus, Receipt
from authsvc.db.statements import receipts
from authsvc.otp import constant_time_eq

log = structlog.get_logger("authsvc.receipts")

TIMESTAMP_HEADER = "X-Authsvc-Timestamp"
MAX_BODY_BYTES = 4096

KANNEL_TYPES: dict[int, Receipt] = {
    1: Receipt.DELIVERED,
    2: Receipt.UNDELIVERED,
    4: Receipt.BUFFERED,
    8: Receipt.BUFFERED,
    16: Receipt.UNDELIVERED,
}


class Refused(Exception):
    """A receipt that is not believed or not understood: `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str, *, answered: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason  # logged
        # What the caller reads, when the reason would tell a stranger about the
        # configuration (which channel has a signed gateway, whether Kannel is used).
        self.answered = answered or reason


@dataclass(frozen=True)
class Claim:
    """A believed receipt, before it meets the outbox."""

    message_id: uuid.UUID
    channel: str
    provider_prefix: str
    receipt: Receipt
    provider_message_id: str | None = None


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """What a gateway writes in its signature header for a receipt."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def signing_gateways(app: App, channel: str) -> list[tuple[str, HttpGateway]]:
    """The channel's HTTP gateways that can sign receipts (http providers with a secret), each
    with what outbox.provider records for the messages it accepted."""
    if channel not in ("sms", "voice", "email"):
        return []
    return [
        (entry.recorded_as, entry.http)
        for entry in app.settings.channel_providers(channel)
        if entry.http is not None and entry.http.hmac_secret is not None
    ]


def _message_id(value: object) -> uuid.UUID:
    if not isinstance(value, str) or len(value) != 36:
        raise Refused(400, "malformed message id")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Refused(400, "malformed message id") from None


def check_webhook(
    app: App, channel: str, headers: dict[str, str], body: bytes, now_s: float
) -> Claim:
    """Believe and read one signed webhook receipt, or raise Refused."""
    gateways = signing_gateways(app, channel)
    if not gateways:
        # Answered as a bad signature: a stranger learns nothing of the channel's providers.
        raise Refused(401, "no signed HTTP gateway on this channel", answered="bad signature")
    timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise Refused(401, "missing or malformed signature or timestamp")
    # With failover a channel may have several gateways: the secret that signed the receipt
    # says which one speaks, and it speaks only for the messages it accepted (statements/
    # receipts.py matches outbox.provider), not for one it timed out on before another took it.
    speaker: str | None = None
    for recorded_as, gateway in gateways:
        assert gateway.hmac_secret is not None
        signature = headers.get(gateway.signature_header.lower(), "")
        secret = gateway.hmac_secret.get_secret_value().encode()
        expected = webhook_signature(secret, timestamp, body)
        if signature and constant_time_eq(expected.encode(), signature.encode()):
            speaker = recorded_as
    if speaker is None:
        raise Refused(401, "bad signature")
    # Checked after the signature: an unsigned caller learns nothing about the window.
    if abs(now_s - int(timestamp)) > app.settings.receipts_max_age_s:
        raise Refused(401, "stale timestamp")
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "body is not a JSON object")
    try:
        receipt = Receipt(str(data.get("status")))
    except ValueError:
        raise Refused(400, "unknown status") from None
    provider_id = data.get("provider_message_id")
    if provider_id is not None and (not isinstance(provider_id, str) or len(provider_id) > 128):
        raise Refused(400, "malformed provider_message_id")
    return Claim(
        message_id=_message_id(data.get("message_id")),
        channel=channel,
        provider_prefix=speaker,
        receipt=receipt,
        provider_message_id=provider_id,
    )


def check_kannel(app: App, query: dict[str, str]) -> Claim:
    """Believe and read one Kannel DLR callback, or raise Refused."""
    kannel = [
        entry
        for entry in app.settings.channel_providers("sms")
        if entry.kind is ProviderName.KANNEL
    ]
    if not kannel:
        raise Refused(
            403, "Kannel is not one of this service's SMS providers", answered="bad token"
        )
    message_id = _message_id(query.get("id"))
    token = query.get("token", "")
    expected = app.keys.receipt_token(message_id.bytes)
    if not constant_time_eq(expected.encode(), token.encode()):
        raise Refused(403, "bad token")
    status = query.get("status", "")
    if not status.isdigit() or int(status) not in KANNEL_TYPES:
        raise Refused(400, "unknown DLR type")
    return Claim(
        message_id=message_id,
        channel="sms",
        provider_prefix=kannel[0].recorded_as,
        receipt=KANNEL_TYPES[int(status)],
    )


async def apply(app: App, claim: Claim, *, source: str) -> MessageStatus | None:
    """Record a believed receipt; the message's status after it, None when nothing changed."""
    applied = await app.db.statement(
        receipts.record,
        receipts.ReceiptUpdate(
            message_id=claim.message_id,
            channel=claim.channel,
            provider_prefix=claim.provider_prefix,
            receipt=claim.receipt,
            provider_message_id=claim.provider_message_id,
            now=app.clock.now(),
        ),
    )
    if applied is None:
        log.info(
            "receipt_ignored",  # unknown, foreign, not sent, or already final
            source=source,
            message_id=str(claim.message_id),
            receipt=claim.receipt.value,
        )
        return None
    outcomes.notify(applied.flow_id)
    log.info(
        "receipt_recorded",
        source=source,
        message_id=str(claim.message_id),
        receipt=claim.receipt.value,
        status=applied.status.value,
    )
    return applied.status

"""Queue a message in the caller's transaction (the transactional outbox).

Destination, subject and text are sealed together; the row's id is the sealing's associated data,
so a payload cannot be moved to another row. Beside the sealed payload the row keeps what may be
kept for good: the masked destination, the template name and a code-free rendering of the text
(`summary`), which is all that remains once the message is sent or abandoned.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.db import MessageStatus, OutboxMessage
from authsvc.db.base import new_id

MASK = "••••"
# Codes, however they are written or read aloud (123456, 123 456, "1, 2, 3, 4, 5, 6"), and any
# run of four digits or more (numbers, references), then token-like words (activation tokens).
_DIGITS = re.compile(r"\d(?:[\s,.-]*\d){3,}")
_TOKEN = re.compile(r"(?=[A-Za-z0-9_+/=-]*\d)[A-Za-z0-9_+/=-]{16,}")


def code_free(text: str) -> str:
    """The text with every code, number and token masked: safe to keep and to show."""
    return _DIGITS.sub(MASK, _TOKEN.sub(MASK, text))


@dataclass(frozen=True)
class Payload:
    to: str
    text: str
    subject: str | None = None
    html: str | None = None

    def dumps(self) -> str:
        data = {"to": self.to, "text": self.text}
        if self.subject is not None:
            data["subject"] = self.subject
        if self.html is not None:
            data["html"] = self.html
        return json.dumps(data)

    @classmethod
    def loads(cls, data: str) -> Payload:
        raw = json.loads(data)
        subject, html = raw.get("subject"), raw.get("html")
        return cls(
            to=str(raw["to"]),
            text=str(raw["text"]),
            subject=None if subject is None else str(subject),
            html=None if html is None else str(html),
        )


def enqueue(
    app: App,
    db: AsyncSession,
    *,
    channel: str,
    template: str,
    to: str,
    masked_to: str,
    text: str,
    flow_id: uuid.UUID | None,
    subject: str | None = None,
    summary: str | None = None,
    html: str | None = None,
    message_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Queue one message; the caller's transaction commits it with whatever it belongs to.

    `subject` and `html` (an alternative to the plain `text`) are for email. `summary` is what
    stays after delivery; by default the text (with the subject) with every code, number and
    token masked. A code's message takes its challenge id as `message_id`, so that "where is
    this code's delivery" is one primary-key read. Call `app.outbox_ready.set()` after the
    commit so that the in-process dispatcher sends at once.
    """
    if channel not in ("sms", "voice", "email"):
        raise ValueError(f"unknown channel {channel!r}")
    message_id = message_id or new_id()
    now = app.clock.now()
    if summary is None:
        summary = code_free(text if subject is None else f"{subject}\n\n{text}")
    db.add(
        OutboxMessage(
            id=message_id,
            flow_id=flow_id,
            channel=channel,
            template=template,
            destination_masked=masked_to,
            payload_sealed=app.keys.sealer.seal(
                Payload(to, text, subject, html).dumps(), message_id.bytes
            ),
            summary=summary,
            status=MessageStatus.QUEUED,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
            provider_message_id=None,
            last_error=None,
            created_at=now,
            sent_at=None,
        )
    )
    return message_id

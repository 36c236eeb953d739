"""What every provider shares: the message handed over, the failure it may report."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

# httpx logs every request line at INFO, query string included: for Kannel's sendsms that is the
# password, the number and the text with its code (and some gateways take an API key in the
# URL). Never below WARNING, whatever logging set-up the process has.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class DeliveryError(Exception):
    """The provider did not accept the message. `permanent` ones are not retried.

    The message is ours (which gateway, which status); `detail` is what the gateway itself said,
    which may quote the payload: the dispatcher keeps only a masked, bounded excerpt of it
    (courier/redaction.py), and masks the message with the payload too."""

    def __init__(self, message: str, *, permanent: bool = False, detail: str | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.detail = detail


@dataclass(frozen=True)
class Outgoing:
    """One message as a provider receives it, unsealed for the time of the call only."""

    id: uuid.UUID
    channel: str
    to: str
    text: str
    created_at: datetime
    attempt: int
    subject: str | None = None
    html: str | None = None
    # What a receipt URL given to the gateway carries besides `reference` (Kannel's dlr-url):
    # proof that the receipt comes from whoever got the message (Keys.receipt_token).
    receipt_token: str | None = None

    @property
    def reference(self) -> str:
        """Our id for the message, the same on every attempt: gateways can deduplicate on it."""
        return str(self.id)


@runtime_checkable
class MessageProvider(Protocol):
    """A provider of this service: `deliver` returns the provider's message id or raises
    DeliveryError; `aclose` releases its connections when the dispatcher stops."""

    async def deliver(self, message: Outgoing) -> str: ...

    async def aclose(self) -> None: ...


class SendProvider(Protocol):
    """The minimal form (a test double, a quick adapter): channel, destination and text."""

    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        """Hand the message over; return the provider's message id."""
        ...


Provider = MessageProvider | SendProvider


def classify_http_status(status: int) -> bool | None:
    """None when accepted (2xx); otherwise whether the failure is permanent.

    408 (timeout) and 429 (rate limited) are worth retrying like 5xx; other 4xx say the request
    itself is wrong (bad number, bad credentials): sending it again would fail again.
    """
    if 200 <= status < 300:
        return None
    return 400 <= status < 500 and status not in (408, 425, 429)

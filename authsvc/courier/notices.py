"""Emails to an account holder (activation, contact or password changed, new administrator),
queued in the caller's transaction like every other message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.courier import outbox, templates
from authsvc.db import OutboxMessage
from authsvc.phones import mask_email


class Holder(Protocol):
    """Who a notice goes to (an Account, or the columns a hot path read of it)."""

    @property
    def email(self) -> str: ...

    @property
    def display_name(self) -> str: ...


def when(moment: datetime) -> str:
    """A moment as the emails say it: the date and time in UTC (the service's clock)."""
    return moment.astimezone(UTC).strftime("%d/%m/%Y à %H:%M (UTC)")


def notice(
    app: App, account: Holder, kind: str, *, to: str | None = None, **fields: str
) -> dict[str, Any]:
    """The outbox row of the `kind` email to the account's address (or to `to`, an address
    it had), for the caller's transaction to insert."""
    address = to or account.email
    message = templates.email(
        kind, display_name=account.display_name, service=app.settings.service_name, **fields
    )
    return outbox.row(
        app,
        channel="email",
        template=kind,
        to=address,
        masked_to=mask_email(address),
        message=message,
        flow_id=None,
    )


def notify(
    app: App,
    db: AsyncSession,
    account: Holder,
    kind: str,
    *,
    to: str | None = None,
    **fields: str,
) -> None:
    """Queue the `kind` email (see `notice`) in the caller's ORM transaction."""
    db.add(OutboxMessage(**notice(app, account, kind, to=to, **fields)))

"""Emails to an account holder (activation, contact or password changed, new administrator),
queued in the caller's transaction like every other message."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.courier import templates
from authsvc.courier.outbox import enqueue
from authsvc.db import Account
from authsvc.phones import mask_email


def notify(
    app: App,
    db: AsyncSession,
    account: Account,
    kind: str,
    *,
    to: str | None = None,
    **fields: str,
) -> None:
    """Queue the `kind` email to the account's address (or to `to`, an address it had)."""
    address = to or account.email
    message = templates.email(
        kind, display_name=account.display_name, service=app.settings.service_name, **fields
    )
    enqueue(
        app,
        db,
        channel="email",
        template=kind,
        to=address,
        masked_to=mask_email(address),
        message=message,
        flow_id=None,
    )

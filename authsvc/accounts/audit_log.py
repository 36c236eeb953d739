"""Reading the audit trail: an administrator's own organisation, newest first, by pages."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select

from authsvc import validation
from authsvc.app import App
from authsvc.db import AuditEvent
from authsvc.errors import invalid_field
from authsvc.policies.permissions import require_admin
from authsvc.sessions import SessionInfo

MAX_PAGE = 500
DEFAULT_PAGE = 100


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    details: list[dict[str, str]]
    next_page_token: str


async def list_events(
    app: App, caller: SessionInfo, *, page_size: int, page_token: str
) -> AuditPage:
    require_admin(caller.role)
    if not 0 <= page_size <= MAX_PAGE:
        raise invalid_field("page_size", f"0 to {MAX_PAGE}")
    size = page_size or DEFAULT_PAGE
    # The page token is the sequence number to continue below: not a secret, just a cursor.
    before: int | None = None
    if page_token:
        # At most 2^63 - 1: the sequence is a BIGINT, and a larger bound overflows the query.
        before = validation.int64_text(page_token, "page_token")
    query = (
        select(AuditEvent)
        .where(AuditEvent.organization_id == caller.organization_id)
        .order_by(AuditEvent.sequence.desc())
        .limit(size + 1)
    )
    if before is not None:
        query = query.where(AuditEvent.sequence < before)
    async with app.read() as db:
        rows = list(await db.scalars(query))
    page, more = rows[:size], len(rows) > size
    return AuditPage(
        events=page,
        details=[json.loads(event.details) for event in page],
        next_page_token=str(page[-1].sequence) if more else "",
    )

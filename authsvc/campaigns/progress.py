"""Daily progress: one row per organisation per day (ready, and not ready by reason).

Recorded whenever a campaign starts or runs a round (the day's row is overwritten: the last
recording of the day wins), so a relay sees the trend of every member under a campaign.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.accounts.directory import account_issues
from authsvc.app import App
from authsvc.db import Account, ReadinessDay


@dataclass(frozen=True)
class Day:
    day: date
    accounts_total: int
    ready: int
    no_phone: int
    invalid_phone: int
    phone_unverified: int
    pending_activation: int


async def record(app: App, db: AsyncSession, organization_ids: list[uuid.UUID]) -> None:
    """Write today's row of each organisation, in the caller's transaction."""
    if not organization_ids:
        return
    now = app.clock.now()
    counts: dict[uuid.UUID, Counter[str]] = {org: Counter() for org in organization_ids}
    for account in await db.scalars(
        select(Account).where(Account.organization_id.in_(organization_ids))
    ):
        issues = account_issues(account)
        tally = counts[account.organization_id]
        tally["accounts_total"] += 1
        tally["ready"] += not issues
        tally.update(issues)
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    for org, tally in counts.items():
        values = {
            name: tally[name]
            for name in (
                "accounts_total",
                "ready",
                "no_phone",
                "invalid_phone",
                "phone_unverified",
                "pending_activation",
            )
        }
        statement = insert(ReadinessDay).values(
            organization_id=org, day=now.date(), recorded_at=now, **values
        )
        await db.execute(
            statement.on_conflict_do_update(
                index_elements=["organization_id", "day"],
                set_={**values, "recorded_at": now},
            )
        )


async def trend(app: App, organization_id: uuid.UUID, days: int = 30) -> list[Day]:
    """The organisation's recorded days, oldest first, over the last `days` days."""
    since = app.clock.now().date() - timedelta(days=days - 1)
    async with app.read() as db:
        rows = await db.scalars(
            select(ReadinessDay)
            .where(ReadinessDay.organization_id == organization_id, ReadinessDay.day >= since)
            .order_by(ReadinessDay.day)
        )
        return [
            Day(
                r.day,
                r.accounts_total,
                r.ready,
                r.no_phone,
                r.invalid_phone,
                r.phone_unverified,
                r.pending_activation,
            )
            for r in rows
        ]

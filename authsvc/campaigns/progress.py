"""Daily progress: one row per organisation per day (ready, and not ready by reason).

Recorded whenever a campaign starts or runs a round (the day's row is overwritten: the last
recording of the day wins), so a relay sees the trend of every member under a campaign.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.accounts.directory import ready_clause
from authsvc.app import App
from authsvc.db import Account, AccountStatus, ReadinessDay


@dataclass(frozen=True)
class Day:
    day: date
    accounts_total: int
    ready: int
    no_phone: int
    invalid_phone: int
    phone_unverified: int
    pending_activation: int


def _issue_counts() -> list[ColumnElement[int]]:
    """`directory.account_issues` per reason, summed in SQL (one pass, however many accounts)."""
    no_kind = Account.phone_kind.is_(None)

    def total(condition: ColumnElement[bool], name: str) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0).label(name)

    return [
        func.count().label("accounts_total"),
        total(ready_clause(), "ready"),
        total(and_(no_kind, Account.phone_masked.is_(None)), "no_phone"),
        total(and_(no_kind, Account.phone_masked.is_not(None)), "invalid_phone"),
        total(and_(~no_kind, Account.phone_verified_at.is_(None)), "phone_unverified"),
        total(Account.status == AccountStatus.PENDING_ACTIVATION, "pending_activation"),
    ]


COLUMNS = (
    "accounts_total",
    "ready",
    "no_phone",
    "invalid_phone",
    "phone_unverified",
    "pending_activation",
)


async def record(app: App, db: AsyncSession, organization_ids: list[uuid.UUID]) -> None:
    """Write today's row of each organisation, in the caller's transaction."""
    if not organization_ids:
        return
    now = app.clock.now()
    rows = await db.execute(
        select(Account.organization_id, *_issue_counts())
        .where(Account.organization_id.in_(organization_ids))
        .group_by(Account.organization_id)
    )
    counted = {row[0]: dict(zip(COLUMNS, (int(v) for v in row[1:]), strict=True)) for row in rows}
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    for org in organization_ids:
        values = counted.get(org, dict.fromkeys(COLUMNS, 0))
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

"""Send budgets: how many campaign emails may still go out in a window.

A budget is a row per window (`send_budgets`), claimed by ONE conditional UPDATE that takes what
is asked or what is left, whichever is smaller, and writes what it took in `last_claim`, read
back by its RETURNING (every SET expression sees the row as it was, so both agree). Two workers
claiming at once are serialised by the row lock (PostgreSQL) or the single writer (SQLite):
together they never take more than the limit. The claim runs in the caller's transaction, so a
round that fails gives its budget back.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, literal, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.db import SendBudget


def day_window(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def minute_window(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


async def claim(
    db: AsyncSession, budget: str, window_start: datetime, *, want: int, limit: int
) -> int:
    """Take up to `want` sends from the window's `limit`; how many were taken (0 if none left)."""
    if want <= 0 or limit <= 0:
        return 0
    insert = (postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert)(
        SendBudget
    )
    await db.execute(
        insert.values(
            budget=budget, window_start=window_start, spent=0, last_claim=0
        ).on_conflict_do_nothing()
    )
    left = literal(limit) - SendBudget.spent
    taken = case((left < want, left), else_=literal(want))
    result = await db.execute(
        update(SendBudget)
        .where(
            SendBudget.budget == budget,
            SendBudget.window_start == window_start,
            SendBudget.spent < limit,
        )
        .values(spent=SendBudget.spent + taken, last_claim=taken)
        .returning(SendBudget.last_claim)
    )
    return int(result.scalar_one_or_none() or 0)


async def release(db: AsyncSession, budget: str, window_start: datetime, count: int) -> None:
    """Give back sends claimed and not used (in the claim's transaction)."""
    await db.execute(
        update(SendBudget)
        .where(SendBudget.budget == budget, SendBudget.window_start == window_start)
        .values(spent=SendBudget.spent - count)
    )

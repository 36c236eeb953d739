"""The pumping breaker of a number prefix, as a send reads it (policies/pumping.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, select

from authsvc.db import SendBreaker
from authsvc.db.statements import table

BREAKERS = table(SendBreaker)

_FIND = select(BREAKERS.c.open_until, BREAKERS.c.generation).where(
    BREAKERS.c.prefix == bindparam("b_prefix")
)


def find(connection: Connection, prefix: str) -> tuple[datetime | None, int] | None:
    """(open until, generation of its bucket), or None when the prefix never tripped."""
    row = connection.execute(_FIND, {"b_prefix": prefix}).first()
    return None if row is None else (row[0], int(row[1]))

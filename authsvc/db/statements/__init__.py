"""The hot paths' statements: one function per decision, SQLAlchemy Core on a Connection,
selecting only the columns the decision needs. Run by `authsvc.db.access.Database`; the flows
and policies decide, these functions only read and write."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table


def table(model: Any) -> Table:
    """The Core table of a mapped class (what the statements work on)."""
    return cast(Table, model.__table__)

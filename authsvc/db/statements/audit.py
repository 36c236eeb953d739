"""Audit rows written inside a hot path's transaction (rows from `authsvc.audit.event`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from authsvc.db import AuditEvent
from authsvc.db.statements import table

AUDIT = table(AuditEvent)


def add(connection: Connection, *rows: dict[str, Any]) -> None:
    if rows:
        connection.execute(insert(AUDIT), list(rows))


def insert_from(row: dict[str, Any], source: Any, **from_source: Any) -> Any:
    """An INSERT ... SELECT of one audit row per row of `source` (a CTE that RETURNING fed):
    the columns named in `from_source` come from it, the others are `row`'s values. PostgreSQL
    runs it inside the decision's data-modifying CTE, so the row exists exactly when the
    change it records does."""
    values = {
        name: from_source[name]
        if name in from_source
        else bindparam(None, value, AUDIT.c[name].type)
        for name, value in row.items()
    }
    return insert(AUDIT).from_select(list(values), select(*values.values()).select_from(source))

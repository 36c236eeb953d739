"""Audit rows written inside a hot path's transaction (rows from `authsvc.audit.event`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert

from authsvc.db import AuditEvent
from authsvc.db.statements import returning, table

AUDIT = table(AuditEvent)


_ADD = insert(AUDIT)

# Every column of an audit row but its sequence and txid (the database fills both), as named
# parameters "audit_<column>" (the prebuilt INSERT ... SELECT statements of PostgreSQL's CTEs
# take them).
COLUMNS = tuple(column.name for column in AUDIT.c if column.name not in ("sequence", "txid"))
PARAMETERS = returning.bound(AUDIT, COLUMNS, "audit_")


def add(connection: Connection, *rows: dict[str, Any]) -> None:
    if rows:
        connection.execute(_ADD, list(rows))


def parameters(row: dict[str, Any], prefix: str = "audit_") -> dict[str, Any]:
    """An audit row (authsvc.audit.event) as the named parameters of `insert_from`."""
    return returning.prefixed(row, prefix)


def insert_from(columns: dict[str, Any], source: Any, **from_source: Any) -> Any:
    """An INSERT ... SELECT of one audit row per row of `source` (a CTE that RETURNING fed):
    the columns named in `from_source` come from it, the others from `columns` (usually
    PARAMETERS: bound per call). PostgreSQL runs it inside the decision's data-modifying CTE,
    so the row exists exactly when the change it records does. Build it once, at import."""
    values = {name: from_source.get(name, columns[name]) for name in COLUMNS}
    return returning.insert_from(AUDIT, values, source)

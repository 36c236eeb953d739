"""INSERTs fed from a data-modifying CTE's RETURNING (PostgreSQL): the row exists exactly when
the change that the CTE made does, in the same statement."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, insert, select


def insert_from(
    table: Table, row: dict[str, Any], source: Any, where: Any = None, **columns: Any
) -> Any:
    """INSERT ... SELECT of `row` once per row of `source` (a CTE, or a join of CTEs) that
    meets `where`: the columns named in `columns` are SQL expressions over the source, the
    others `row`'s values."""
    values = {
        name: columns[name] if name in columns else bindparam(None, value, table.c[name].type)
        for name, value in row.items()
    }
    chosen = select(*values.values()).select_from(source)
    if where is not None:
        chosen = chosen.where(where)
    return insert(table).from_select(list(values), chosen)

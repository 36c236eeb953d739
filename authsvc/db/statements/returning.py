"""INSERTs fed from a data-modifying CTE's RETURNING (PostgreSQL): the row exists exactly when
the change that the CTE made does, in the same statement. Their values are bound parameters
named after the columns with a prefix of their own (a statement may insert several rows), so
that the statement is built and compiled once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import BindParameter, Table, bindparam, insert, select


def bound(table: Table, columns: Iterable[str], prefix: str) -> dict[str, BindParameter[Any]]:
    """A parameter for each of these columns of `table`, named `prefix` + the column's name."""
    return {name: bindparam(prefix + name, type_=table.c[name].type) for name in columns}


def prefixed(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The values of `row` for the parameters that `bound(..., prefix)` made."""
    return {prefix + name: value for name, value in row.items()}


def insert_from(table: Table, values: dict[str, Any], source: Any, where: Any = None) -> Any:
    """INSERT ... SELECT of `values` (column -> SQL expression: a parameter, or an expression
    over the source) once per row of `source` (a CTE, or a join of CTEs) that meets `where`."""
    chosen = select(*values.values()).select_from(source)
    if where is not None:
        chosen = chosen.where(where)
    return insert(table).from_select(list(values), chosen)

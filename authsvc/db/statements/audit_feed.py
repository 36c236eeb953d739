"""The audit trail read as a feed: in a position order that a row committed late can never
jump behind, and the webhook sinks' cursors (one conditional UPDATE per decision).

Why not simply "sequence > cursor": on PostgreSQL a sequence value is drawn when the INSERT runs,
not when its transaction commits. A transaction that drew 41 and commits after the one that drew
42 would appear behind a reader that already moved past 42: lost for good. So every row carries
the id of the transaction that wrote it (`txid`, migration 0015), the feed is ordered by
(txid, sequence) - the position - and reads only rows whose transaction is older than the oldest
one still running (`pg_snapshot_xmin`): those are all committed or rolled back, and any
transaction that writes later gets a larger id, so nothing can ever appear below a position
already read. SQLite serialises its writers (one at a time, BEGIN IMMEDIATE), and a row's
sequence is its commit order: txid stays 0 there and the position is (0, sequence).

Events of no organisation are fed to the sinks under the nil UUID.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    bindparam,
    exists,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from authsvc.db import AuditEvent, AuditSinkCursor, Organization
from authsvc.db.statements import table

AUDIT = table(AuditEvent)
CURSORS = table(AuditSinkCursor)
ORGANIZATIONS = table(Organization)
_E = AUDIT.c
_C = CURSORS.c

NO_ORGANIZATION = uuid.UUID(int=0)
MAX_ERROR_CHARS = 200


@dataclass(frozen=True, order=True)
class Position:
    """Where an event sits in the feed; a reader resumes strictly after one."""

    txid: int
    sequence: int


START = Position(0, 0)

# PostgreSQL: the oldest transaction still running, seen by this very statement's snapshot.
_PG_XMIN = text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


def _settled(dialect: str) -> ColumnElement[bool]:
    """Rows whose writer can no longer be running (no late commit can come below them)."""
    return _E.txid < _PG_XMIN if dialect == "postgresql" else true()


def _beyond(txid: Any, sequence: Any) -> ColumnElement[bool]:
    return tuple_(_E.txid, _E.sequence) > tuple_(txid, sequence)


_FEED_COLUMNS = (
    _E.sequence,
    _E.txid,
    _E.organization_id,
    _E.occurred_at,
    _E.event_type,
    _E.outcome,
    _E.actor_account_id,
    _E.target_account_id,
    _E.ip_address,
    _E.request_id,
    _E.details,
)
_AFTER_T = bindparam("after_txid", type_=_E.txid.type)
_AFTER_S = bindparam("after_sequence", type_=_E.sequence.type)
_LIMIT = bindparam("limit", type_=_E.sequence.type)
_ORGANIZATION = bindparam("organization_id", type_=_E.organization_id.type)


def _feed(dialect: str, organization: ColumnElement[bool] | None) -> Any:
    query = select(*_FEED_COLUMNS).where(_beyond(_AFTER_T, _AFTER_S), _settled(dialect))
    if organization is not None:
        query = query.where(organization)
    return query.order_by(_E.txid, _E.sequence).limit(_LIMIT)


_DIALECTS = ("postgresql", "sqlite")
_READ_ALL = {d: _feed(d, None) for d in _DIALECTS}
_READ_ORG = {d: _feed(d, _E.organization_id == _ORGANIZATION) for d in _DIALECTS}
_READ_NONE = {d: _feed(d, _E.organization_id.is_(None)) for d in _DIALECTS}
_POSITION_OF = select(_E.txid, _E.sequence).where(_E.sequence == bindparam("sequence"))


def position_of(connection: Connection, sequence: int) -> Position | None:
    """The position of the event `sequence` (None: no such event)."""
    row = connection.execute(_POSITION_OF, {"sequence": sequence}).first()
    return Position(row.txid, row.sequence) if row is not None else None


def read(
    connection: Connection,
    after: Position,
    limit: int,
    organization_id: uuid.UUID | None = None,
    *,
    of_organization: bool = False,
) -> Sequence[Row[Any]]:
    """The next `limit` settled events after `after`, in position order: of every organisation,
    or (`of_organization`) of `organization_id` only (NO_ORGANIZATION or None: of none)."""
    dialect = connection.dialect.name
    parameters: dict[str, Any] = {
        "after_txid": after.txid,
        "after_sequence": after.sequence,
        "limit": limit,
    }
    if not of_organization:
        statement = _READ_ALL[dialect]
    elif organization_id is None or organization_id == NO_ORGANIZATION:
        statement = _READ_NONE[dialect]
    else:
        statement = _READ_ORG[dialect]
        parameters["organization_id"] = organization_id
    return connection.execute(statement, parameters).all()


# ---- the sinks' cursors ----------------------------------------------------------------------

_SINK = bindparam("cursor_sink", type_=_C.sink.type)
_NOW = bindparam("cursor_now", type_=_C.leased_until.type)
_OWNER = bindparam("cursor_owner", type_=_C.lease_owner.type)
_ORG = bindparam("cursor_organization", type_=_C.organization_id.type)


def _missing_cursors() -> Any:
    """The organisations (and NO_ORGANIZATION) that have no cursor of the sink yet."""
    organisations = union_all(
        select(ORGANIZATIONS.c.id.label("id")),
        select(literal(NO_ORGANIZATION, _C.organization_id.type).label("id")),
    ).subquery("candidates")
    has_cursor = exists().where(_C.sink == _SINK, _C.organization_id == organisations.c.id)
    return select(_SINK, organisations.c.id, literal(0), literal(0), literal(0)).where(~has_cursor)


_NEW_CURSOR_COLUMNS = ["sink", "organization_id", "last_txid", "last_sequence", "failures"]
_OPEN = {
    "postgresql": postgresql_insert(CURSORS)
    .from_select(_NEW_CURSOR_COLUMNS, _missing_cursors())
    .on_conflict_do_nothing(),
    "sqlite": sqlite_insert(CURSORS)
    .from_select(_NEW_CURSOR_COLUMNS, _missing_cursors())
    .on_conflict_do_nothing(),
}


def open_cursors(connection: Connection, sink: str) -> int:
    """A cursor at the start for every organisation that has none (concurrent dispatchers:
    the first insert wins, the others do nothing). The number made."""
    result = connection.execute(_OPEN[connection.dialect.name], {"cursor_sink": sink})
    return int(result.rowcount or 0)


_FREE = and_(
    or_(_C.leased_until.is_(None), _C.leased_until < _NOW),
    or_(_C.next_attempt_at.is_(None), _C.next_attempt_at <= _NOW),
)


def _pending(dialect: str) -> ColumnElement[bool]:
    """The cursor's organisation has settled events beyond it (two indexed probes at most)."""
    beyond = _beyond(_C.last_txid, _C.last_sequence)
    of_org = exists().where(_E.organization_id == _C.organization_id, beyond, _settled(dialect))
    of_none = exists().where(_E.organization_id.is_(None), beyond, _settled(dialect))
    return or_(of_org, and_(_C.organization_id == NO_ORGANIZATION, of_none))


_DUE = {
    d: select(_C.organization_id)
    .where(_C.sink == _SINK, _FREE, _pending(d))
    .order_by(_C.next_attempt_at, _C.organization_id)
    .limit(_LIMIT)
    for d in _DIALECTS
}


def due(connection: Connection, sink: str, now: datetime, limit: int) -> list[uuid.UUID]:
    """Organisations whose next events the sink may deliver now (not leased, not backing off)."""
    rows = connection.execute(
        _DUE[connection.dialect.name], {"cursor_sink": sink, "cursor_now": now, "limit": limit}
    )
    return [row.organization_id for row in rows]


@dataclass(frozen=True)
class Lease:
    organization_id: uuid.UUID
    owner: str
    position: Position  # the cursor as read when leased: the advance's condition
    failures: int


_THIS = and_(_C.sink == _SINK, _C.organization_id == _ORG)
_TAKE = (
    update(CURSORS)
    .where(_THIS, _FREE)
    .values(lease_owner=_OWNER, leased_until=bindparam("until", type_=_C.leased_until.type))
    .returning(_C.last_txid, _C.last_sequence, _C.failures)
)


def take_lease(
    connection: Connection,
    sink: str,
    organization_id: uuid.UUID,
    owner: str,
    now: datetime,
    until: datetime,
) -> Lease | None:
    """Lease the organisation's cursor if nobody holds it and it is not backing off: one
    conditional UPDATE, so of two dispatchers racing for it exactly one gets it."""
    row = connection.execute(
        _TAKE,
        {
            "cursor_sink": sink,
            "cursor_organization": organization_id,
            "cursor_owner": owner,
            "cursor_now": now,
            "until": until,
        },
    ).first()
    if row is None:
        return None
    return Lease(organization_id, owner, Position(row.last_txid, row.last_sequence), row.failures)


_STILL_MINE = and_(
    _THIS,
    _C.lease_owner == _OWNER,
    _C.last_txid == bindparam("read_txid", type_=_C.last_txid.type),
    _C.last_sequence == bindparam("read_sequence", type_=_C.last_sequence.type),
)
_ADVANCE = (
    update(CURSORS)
    .where(_STILL_MINE)
    .values(
        last_txid=bindparam("to_txid", type_=_C.last_txid.type),
        last_sequence=bindparam("to_sequence", type_=_C.last_sequence.type),
        lease_owner=None,
        leased_until=None,
        failures=0,
        next_attempt_at=None,
        last_error=None,
    )
)
_FAILED = (
    update(CURSORS)
    .where(_STILL_MINE)
    .values(
        lease_owner=None,
        leased_until=None,
        failures=_C.failures + 1,
        next_attempt_at=bindparam("retry_at", type_=_C.next_attempt_at.type),
        last_error=bindparam("error", type_=_C.last_error.type),
    )
)
_RELEASE = update(CURSORS).where(_STILL_MINE).values(lease_owner=None, leased_until=None)


def _held(sink: str, lease: Lease) -> dict[str, Any]:
    return {
        "cursor_sink": sink,
        "cursor_organization": lease.organization_id,
        "cursor_owner": lease.owner,
        "read_txid": lease.position.txid,
        "read_sequence": lease.position.sequence,
    }


def advance(connection: Connection, sink: str, lease: Lease, to: Position) -> bool:
    """Move the cursor to `to` (the last event delivered) and release the lease, only if the
    lease is still this one's and the cursor still where it was read. False: another
    dispatcher took over (this one's delivery was a duplicate, which at-least-once allows)."""
    result = connection.execute(
        _ADVANCE, {**_held(sink, lease), "to_txid": to.txid, "to_sequence": to.sequence}
    )
    return bool(result.rowcount)


def failed(connection: Connection, sink: str, lease: Lease, retry_at: datetime, error: str) -> bool:
    """Record a failed delivery: the cursor stays (the same events go next), the lease is
    released, and nobody retries the organisation before `retry_at`."""
    result = connection.execute(
        _FAILED, {**_held(sink, lease), "retry_at": retry_at, "error": error[:MAX_ERROR_CHARS]}
    )
    return bool(result.rowcount)


def release(connection: Connection, sink: str, lease: Lease) -> bool:
    """Give the lease back without delivering (nothing settled to send after all)."""
    return bool(connection.execute(_RELEASE, _held(sink, lease)).rowcount)

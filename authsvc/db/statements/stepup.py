"""Step-up: what AuthorizeSensitiveAction reads (the caller, the target, a login's
availability) and the flow it opens with its audit row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal, select

from authsvc.db import Account, Flow
from authsvc.db.statements import audit, factors, returning, table

ACCOUNTS = table(Account)
FLOWS = table(Flow)


@dataclass(frozen=True)
class Caller:
    """The caller's columns a step-up decides on (the names of `authsvc.db.Account`)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    failed_code_count: int
    code_window_failures: int
    code_locked_until: datetime | None
    phone_kind: str | None
    phone_masked: str | None
    has_totp: bool  # a confirmed authenticator app: the flow lists CHANNEL_TOTP
    has_passkey: bool  # a passkey: the flow lists CHANNEL_PASSKEY


@dataclass(frozen=True)
class Target:
    """The target's columns (permissions.check_target)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    status: str


@dataclass(frozen=True)
class Parties:
    caller: Caller | None
    target: Target | None
    login_taken: bool


_OTHER = ("has_totp", "has_passkey")  # the last two fields, in this order
_CALLER = select(
    *(ACCOUNTS.c[name] for name in Caller.__dataclass_fields__ if name not in _OTHER),
    *factors.other_factors(ACCOUNTS.c.id),
).where(ACCOUNTS.c.id == bindparam("s_caller"))
_TARGET = select(*(ACCOUNTS.c[name] for name in Target.__dataclass_fields__)).where(
    ACCOUNTS.c.id == bindparam("s_target")
)
_LOGIN_TAKEN = select(ACCOUNTS.c.id).where(
    ACCOUNTS.c.organization_id == bindparam("s_organization"),
    ACCOUNTS.c.login == bindparam("s_login"),
)


def parties(
    connection: Connection,
    caller_id: uuid.UUID,
    target_id: uuid.UUID | None,
    new_login: tuple[uuid.UUID, str] | None,
) -> Parties:
    """The caller, the target if one is named, and whether `new_login` (organisation, login)
    is taken: the statements a step-up needs, in one read."""
    caller = connection.execute(_CALLER, {"s_caller": caller_id}).first()
    target = connection.execute(_TARGET, {"s_target": target_id}).first() if target_id else None
    taken = (
        connection.execute(
            _LOGIN_TAKEN, {"s_organization": new_login[0], "s_login": new_login[1]}
        ).first()
        is not None
        if new_login
        else False
    )
    return Parties(
        _caller(caller) if caller else None,
        Target(*target) if target else None,
        taken,
    )


def _caller(row: Any) -> Caller:
    columns: dict[str, Any] = dict(zip(Caller.__dataclass_fields__, row, strict=True))
    for name in _OTHER:
        columns[name] = bool(columns[name])  # SQLite answers 0 or 1
    return Caller(**columns)


_FLOW_COLUMNS = tuple(column.name for column in FLOWS.c)
_OPEN = insert(FLOWS).values(returning.bound(FLOWS, _FLOW_COLUMNS, "f_"))
_OPENED = _OPEN.returning(FLOWS.c.id).cte("opened")
# PostgreSQL: the flow and its audit row in one statement.
_OPEN_AND_LOG = select(literal(1)).add_cte(
    audit.insert_from(audit.PARAMETERS, _OPENED).cte("logged")
)


def open_flow(connection: Connection, flow: dict[str, Any], opened: dict[str, Any]) -> None:
    """Insert the pending flow (every column of `flow`, login.flow_row) and its `opened` audit
    row: one statement on PostgreSQL."""
    parameters = returning.prefixed({name: flow.get(name) for name in _FLOW_COLUMNS}, "f_")
    if connection.dialect.name == "postgresql":
        connection.execute(_OPEN_AND_LOG, {**parameters, **audit.parameters(opened)})
        return
    connection.execute(_OPEN, parameters)
    audit.add(connection, opened)

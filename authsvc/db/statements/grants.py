"""Action grants: spending one (a conditional UPDATE, with its audit row) and reading the state
of one that could not be spent (to say why)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from authsvc.db import ActionGrant
from authsvc.db.statements import audit, table

GRANTS = table(ActionGrant)


@dataclass(frozen=True)
class Spent:
    account_id: uuid.UUID
    redeemed_at: datetime


@dataclass(frozen=True)
class GrantState:
    """What a refusal looks at, most fundamental first (flows/grants.py decides the reason)."""

    session_id: uuid.UUID
    redeemed_at: datetime | None
    expires_at: datetime
    action: str
    target_account_id: uuid.UUID | None


def _at(name: str) -> Any:
    return bindparam(name, type_=GRANTS.c.expires_at.type)


# A grant that this caller may spend now, for this exact action, target and values. Named
# parameters (g_ for grant: a bound name must not be a column's name in an UPDATE): g_digest,
# g_now, g_session, g_action, g_target (None: no target), g_values.
_REDEEMABLE = (
    GRANTS.c.token_digest == bindparam("g_digest"),
    GRANTS.c.redeemed_at.is_(None),
    GRANTS.c.expires_at > _at("g_now"),
    GRANTS.c.session_id == bindparam("g_session", type_=GRANTS.c.session_id.type),
    GRANTS.c.action == bindparam("g_action"),
    GRANTS.c.target_account_id.is_not_distinct_from(
        bindparam("g_target", type_=GRANTS.c.target_account_id.type)
    ),
    GRANTS.c.values_digest == bindparam("g_values"),
)
# Of concurrent redemptions exactly one matches.
SPEND = (
    update(GRANTS)
    .where(*_REDEEMABLE)
    .values(redeemed_at=_at("g_now"))
    .returning(GRANTS.c.account_id, GRANTS.c.redeemed_at)
)
_SPENT = SPEND.cte("spent")
# PostgreSQL: spent, with its audit row, in one statement.
_SPEND_AND_LOG = select(_SPENT.c.account_id, _SPENT.c.redeemed_at).add_cte(
    audit.insert_from(audit.PARAMETERS, _SPENT).cte("logged")
)
IS_REDEEMABLE = select(GRANTS.c.token_digest).where(*_REDEEMABLE)
STATE = select(
    GRANTS.c.session_id,
    GRANTS.c.redeemed_at,
    GRANTS.c.expires_at,
    GRANTS.c.action,
    GRANTS.c.target_account_id,
).where(GRANTS.c.token_digest == bindparam("g_digest"))


def redeem(
    connection: Connection, parameters: dict[str, Any], redeemed: dict[str, Any]
) -> Spent | GrantState | None:
    """Spend the grant with its `redeemed` audit row; else the grant's state (None: unknown).
    One statement on PostgreSQL when the grant is spent."""
    if connection.dialect.name == "postgresql":
        row = connection.execute(
            _SPEND_AND_LOG, {**parameters, **audit.parameters(redeemed)}
        ).first()
    else:
        row = connection.execute(SPEND, parameters).first()
        if row is not None:
            audit.add(connection, redeemed)
    if row is not None:
        return Spent(row[0], row[1])
    found = connection.execute(STATE, {"g_digest": parameters["g_digest"]}).first()
    return None if found is None else GrantState(*found)

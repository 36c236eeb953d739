"""Action grants: bound to account, session, action, target and the exact new values.

The values are normalised (phone to E.164, services sorted) and serialised canonically before
their keyed digest is taken, so that the same request always binds the same way and any change
of value, however small, does not match. Redemption is one conditional UPDATE: of concurrent
redemptions of a grant exactly one succeeds.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, validation
from authsvc.app import App
from authsvc.db import ActionGrant, AuditEvent, Flow, Role
from authsvc.db.statements import grants as statements
from authsvc.errors import Failure, invalid_field
from authsvc.otp import random_token, token_digest
from authsvc.phones import parse_phone
from authsvc.policies.permissions import Action

if TYPE_CHECKING:
    from authsvc.sessions import SessionInfo

GRANT_TTL_S = 300


@dataclass(frozen=True)
class ActionValues:
    """The new values of a sensitive action, normalised."""

    email: str | None = None
    phone: str | None = None
    display_name: str | None = None
    login: str | None = None
    role: Role | None = None
    service_codes: tuple[str, ...] = field(default=())
    # SIRETs, validated and sorted (relay membership, a relay's campaign).
    organization_sirets: tuple[str, ...] = field(default=())
    # The factor a REMOVE_FACTOR grant removes (its id as str(uuid): one spelling only).
    factor_id: str | None = None

    def canonical(self, action: Action, target: uuid.UUID | None) -> str:
        # organization_sirets and factor_id appear only when given: the digests of the other
        # actions stay what they were before the fields existed.
        extra: dict[str, object] = {}
        if self.organization_sirets:
            extra["organization_sirets"] = list(self.organization_sirets)
        if self.factor_id is not None:
            extra["factor_id"] = self.factor_id
        return json.dumps(
            {
                **extra,
                "action": action.value,
                "target": str(target) if target else "",
                "email": self.email,
                "phone": self.phone,
                "display_name": self.display_name,
                "login": self.login,
                "role": self.role.value if self.role else None,
                "service_codes": list(self.service_codes),
            },
            sort_keys=True,
            ensure_ascii=True,
        )


def normalise(
    action: Action,
    *,
    email: str | None,
    phone: str | None,
    display_name: str | None,
    login: str | None,
    role: Role | None,
    service_codes: list[str],
    catalogue: dict[str, str],
    default_region: str,
    organization_sirets: list[str] | None = None,
    factor_id: str | None = None,
) -> ActionValues:
    """Check that the action gets exactly the values it needs, valid, and normalise them."""
    sirets = organization_sirets or []
    given = {
        "factor_id": factor_id is not None,
        "organization_sirets": bool(sirets),
        "email": email is not None,
        "phone": phone is not None,
        "display_name": display_name is not None,
        "login": login is not None,
        "role": role is not None,
        "service_codes": bool(service_codes),
    }
    if action is Action.CREATE_ACCOUNT:
        needed, allowed = {"email", "phone", "display_name", "login"}, {"role"}
    elif action in (Action.UPDATE_ACCOUNT_CONTACT, Action.UPDATE_OWN_CONTACT):
        if given["email"] == given["phone"]:
            raise invalid_field("new_values", "give exactly one of email and phone")
        needed, allowed = set(), {"email", "phone"}
    elif action is Action.GRANT_SERVICE_ACCESS:
        needed, allowed = {"service_codes"}, set()
    elif action in (Action.ADD_RELAY_MEMBERS, Action.REMOVE_RELAY_MEMBERS):
        needed, allowed = {"organization_sirets"}, set()
    elif action is Action.REMOVE_FACTOR:
        # The grant removes one factor, the one named: not any other of the account's.
        needed, allowed = {"factor_id"}, set()
    elif action is Action.START_READINESS_CAMPAIGN:
        # Empty: the caller's own organisation; SIRETs: those members of the caller's relay.
        needed, allowed = set(), {"organization_sirets"}
    else:
        needed, allowed = set(), set()
    for name, present in given.items():
        if name in needed and not present:
            raise invalid_field(f"new_values.{name}", f"{action.value} needs {name}")
        if present and name not in needed | allowed:
            raise invalid_field(f"new_values.{name}", f"{action.value} takes no {name}")
    codes = tuple(sorted(set(service_codes)))
    for code in codes:
        if code not in catalogue:
            raise Failure(
                "INVALID_ARGUMENT",
                "SERVICE_UNKNOWN",
                f"no service {code[:64]!r} in the catalogue",
                metadata={"field": "new_values.service_codes"},
            )
    return ActionValues(
        email=validation.email(email, "new_values.email") if email is not None else None,
        phone=(
            parse_phone(phone, field="new_values.phone", default_region=default_region).e164
            if phone is not None
            else None
        ),
        display_name=(
            validation.name(display_name, "new_values.display_name")
            if display_name is not None
            else None
        ),
        login=validation.login(login, "new_values.login") if login is not None else None,
        role=(role or Role.MEMBER) if action is Action.CREATE_ACCOUNT else None,
        service_codes=codes,
        organization_sirets=tuple(
            sorted({validation.siret(s, "new_values.organization_sirets") for s in sirets})
        ),
        factor_id=(
            str(validation.factor_id(factor_id, "new_values.factor_id"))
            if factor_id is not None
            else None
        ),
    )


@dataclass(frozen=True)
class IssuedGrant:
    token: str
    action: Action
    target_account_id: uuid.UUID | None
    expires_at: datetime


def issue(app: App, db: AsyncSession, flow: Flow) -> IssuedGrant:
    """Add the grant of a completed step-up flow to the caller's transaction."""
    assert flow.session_id and flow.action and flow.values_digest
    now = app.clock.now()
    token = random_token(32)
    expires_at = now + timedelta(seconds=GRANT_TTL_S)
    db.add(
        ActionGrant(
            token_digest=token_digest(token),
            account_id=flow.account_id,
            session_id=flow.session_id,
            flow_id=flow.id,
            action=flow.action,
            target_account_id=flow.target_account_id,
            values_digest=flow.values_digest,
            created_at=now,
            expires_at=expires_at,
            redeemed_at=None,
        )
    )
    return IssuedGrant(token, Action(flow.action), flow.target_account_id, expires_at)


async def redeem(
    app: App,
    db: AsyncSession,
    caller: SessionInfo,
    *,
    token: str,
    action: Action,
    target: uuid.UUID | None,
    values: ActionValues,
    by: str = "service",
) -> statements.Spent:
    """Consume the grant in the caller's transaction, or refuse with the precise reason.

    The caller's operation runs in the same transaction: if it fails, the grant is not spent
    (and neither is its audit event written).
    """
    now = app.clock.now()
    redeemable = _redeemable(app, caller, token, action, target, values, now)
    row = (await db.execute(statements.SPEND, redeemable)).first()
    if row is not None:
        db.add(AuditEvent(**_redeemed_event(app, caller, action, target, by)))
        return statements.Spent(row[0], row[1])
    raise refusal(await _state(db, token), caller, action, target, now)


def _redeemed_event(
    app: App, caller: SessionInfo, action: Action, target: uuid.UUID | None, by: str
) -> dict[str, Any]:
    return audit.event(
        app.clock,
        "grant.redeemed",
        organization_id=caller.organization_id,
        actor=caller.account_id,
        target=target,
        action=action.value,
        by=by,
    )


def _redeemable(
    app: App,
    caller: SessionInfo,
    token: str,
    action: Action,
    target: uuid.UUID | None,
    values: ActionValues,
    now: datetime,
) -> dict[str, Any]:
    """The parameters of a grant that this caller may spend now, for this exact action
    (statements/grants.py holds the WHERE clause they fill)."""
    return {
        "g_digest": token_digest(token),
        "g_now": now,
        "g_session": caller.session_id,
        "g_action": action.value,
        "g_target": target,
        "g_values": app.keys.binding_digest(values.canonical(action, target)),
    }


async def ensure_redeemable(
    app: App,
    db: AsyncSession,
    caller: SessionInfo,
    *,
    token: str,
    action: Action,
    target: uuid.UUID | None,
    values: ActionValues,
) -> None:
    """A read before costly or secret-dependent work (ChangePassword checks the grant before
    the password): the same refusal as `redeem` would give, nothing spent. `redeem` still
    decides, atomically, afterwards."""
    now = app.clock.now()
    found = await db.scalar(
        statements.IS_REDEEMABLE, _redeemable(app, caller, token, action, target, values, now)
    )
    if found is None:
        raise refusal(await _state(db, token), caller, action, target, now)


async def _state(db: AsyncSession, token: str) -> statements.GrantState | None:
    found = (await db.execute(statements.STATE, {"g_digest": token_digest(token)})).first()
    return None if found is None else statements.GrantState(*found)


def refusal(
    stored: statements.GrantState | None,
    caller: SessionInfo,
    action: Action,
    target: uuid.UUID | None,
    now: datetime,
) -> Failure:
    """Why a grant cannot be spent, most fundamental reason first."""
    if stored is None:
        return Failure("NOT_FOUND", "GRANT_NOT_FOUND", "unknown grant")
    if stored.session_id != caller.session_id:
        return Failure("PERMISSION_DENIED", "GRANT_SESSION_MISMATCH", "grant of another session")
    if stored.redeemed_at is not None:
        return Failure("FAILED_PRECONDITION", "GRANT_ALREADY_USED", "this grant was used")
    if stored.expires_at <= now:
        return Failure("FAILED_PRECONDITION", "GRANT_EXPIRED", "this grant has expired")
    if stored.action != action.value:
        return Failure("PERMISSION_DENIED", "GRANT_ACTION_MISMATCH", "grant of another action")
    if stored.target_account_id != target:
        return Failure("PERMISSION_DENIED", "GRANT_TARGET_MISMATCH", "grant for another account")
    return Failure("PERMISSION_DENIED", "GRANT_VALUES_MISMATCH", "grant for other values")


async def redeem_now(
    app: App,
    caller: SessionInfo,
    *,
    token: str,
    action: Action,
    target: uuid.UUID | None,
    values: ActionValues,
) -> statements.Spent:
    """RedeemActionGrant: another backend consumes the grant for an action it performs (one
    round trip on PostgreSQL, one hop on SQLite, when it is spent)."""
    now = app.clock.now()
    found = await app.db.statement(
        statements.redeem,
        _redeemable(app, caller, token, action, target, values, now),
        _redeemed_event(app, caller, action, target, "backend"),
    )
    if isinstance(found, statements.Spent):
        return found
    raise refusal(found, caller, action, target, now)

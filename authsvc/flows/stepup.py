"""Step-up: a signed-in user asks to perform a sensitive action; a fresh code is ALWAYS needed.

The session's age and its last code do not matter: every sensitive action opens its own flow,
and the grant that its Verify returns is bound to this session, this action, this target and
the digest of exactly these new values.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from authsvc import audit
from authsvc.app import App
from authsvc.db import Account, FlowPurpose
from authsvc.db.statements import stepup as statements
from authsvc.errors import Failure, invalid_field
from authsvc.flows import destination, grants
from authsvc.flows.login import ClientInfo, flow_row, pending_view_of
from authsvc.flows.views import PendingFlowView
from authsvc.policies import lockout
from authsvc.policies.permissions import Action, check_target
from authsvc.sessions import SessionInfo


def parse_target(value: str, field: str = "target_account_id") -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value) if len(value) == 36 else uuid.UUID("")
    except ValueError:
        raise invalid_field(field, "not an account id") from None


async def load_accounts(
    app: App, caller_id: uuid.UUID, target_id: uuid.UUID | None
) -> tuple[Account, Account | None]:
    async with app.read() as db:
        caller = await db.scalar(select(Account).where(Account.id == caller_id))
        target = (
            await db.scalar(select(Account).where(Account.id == target_id)) if target_id else None
        )
    assert caller is not None  # a valid session has an account
    if target_id is not None and target is None:
        raise Failure(
            "PERMISSION_DENIED", "PERMISSION_DENIED", "no such account in your organisation"
        )
    return caller, target


async def authorize(
    app: App,
    caller: SessionInfo,
    action: Action,
    target_id: uuid.UUID | None,
    values: grants.ActionValues,
    client: ClientInfo,
) -> PendingFlowView:
    now = app.clock.now()
    await app.limits.step_up(now, ip=client.ip_address, account_id=str(caller.account_id))
    new_login = (caller.organization_id, values.login or "")
    found = await app.db.read(
        statements.parties,
        caller.account_id,
        target_id,
        new_login if action is Action.CREATE_ACCOUNT else None,
    )
    account = found.caller
    assert account is not None  # a valid session has an account
    if target_id is not None and found.target is None:
        raise Failure(
            "PERMISSION_DENIED", "PERMISSION_DENIED", "no such account in your organisation"
        )
    lockout.check_code_lock(app, account, now)  # no step-up while the second factor is locked
    bound_target = check_target(
        action,
        caller_id=account.id,
        caller_role=caller.role,
        caller_organization=account.organization_id,
        target=found.target,
    )
    if found.login_taken:
        raise Failure(
            "ALREADY_EXISTS",
            "ALREADY_EXISTS",
            "this login is taken in your organisation",
            metadata={"field": "new_values.login"},
        )
    # The code goes to the caller's own phone, or comes from their own authenticator app.
    where = destination.account_phone(account, destination.factor_channels(app.settings, account))
    flow = flow_row(
        app,
        FlowPurpose.STEP_UP,
        account.id,
        client,
        session_id=caller.session_id,
        action=action.value,
        target_account_id=bound_target,
        values_digest=app.keys.binding_digest(values.canonical(action, bound_target)),
    )
    opened = audit.event(
        app.clock,
        "stepup.opened",
        organization_id=account.organization_id,
        actor=account.id,
        target=bound_target,
        action=action.value,
        flow_id=str(flow["id"]),
    )
    await app.db.statement(statements.open_flow, flow, opened)
    return pending_view_of(flow["id"], FlowPurpose.STEP_UP, flow["expires_at"], where)

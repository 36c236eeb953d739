"""Access to platform services: granting needs a step-up grant, revoking only the admin role."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.app import App
from authsvc.db import Account, ServiceAccess
from authsvc.errors import Failure
from authsvc.flows import grants
from authsvc.flows.stepup import load_accounts
from authsvc.policies.permissions import Action, check_target
from authsvc.sessions import SessionInfo


def known_codes(app: App, codes: list[str], field: str = "service_codes") -> tuple[str, ...]:
    for code in codes:
        if code not in app.settings.services:
            raise Failure(
                "INVALID_ARGUMENT",
                "SERVICE_UNKNOWN",
                f"no service {code[:64]!r} in the catalogue",
                metadata={"field": field},
            )
    if not codes:
        raise Failure(
            "INVALID_ARGUMENT", "INVALID_FIELD", "no service given", metadata={"field": field}
        )
    return tuple(sorted(set(codes)))


async def codes_of(db: AsyncSession, account_id: uuid.UUID) -> list[str]:
    rows = await db.scalars(
        select(ServiceAccess.service_code)
        .where(ServiceAccess.account_id == account_id)
        .order_by(ServiceAccess.service_code)
    )
    return list(rows)


async def _admin_and_target(
    app: App, caller: SessionInfo, target_id: uuid.UUID | None
) -> tuple[Account, uuid.UUID]:
    account, target = await load_accounts(app, caller.account_id, target_id)
    bound = check_target(
        Action.GRANT_SERVICE_ACCESS,
        caller_id=account.id,
        caller_role=caller.role,
        caller_organization=account.organization_id,
        target=target,
    )
    assert bound is not None  # check_target never returns None for this action
    return account, bound


async def grant_access(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    target_id: uuid.UUID | None,
    codes: list[str],
) -> list[str]:
    account, bound = await _admin_and_target(app, caller, target_id)
    service_codes = known_codes(app, codes)
    now = app.clock.now()
    async with app.write() as db:
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.GRANT_SERVICE_ACCESS,
            target=bound,
            values=grants.ActionValues(service_codes=service_codes),
        )
        rows = [
            {"account_id": bound, "service_code": code, "granted_at": now, "granted_by": account.id}
            for code in service_codes
        ]
        insert = postgresql.insert if app.engine.dialect.name == "postgresql" else sqlite.insert
        await db.execute(insert(ServiceAccess).values(rows).on_conflict_do_nothing())
        audit.record(
            db,
            app.clock,
            "service.granted",
            organization_id=account.organization_id,
            actor=account.id,
            target=bound,
            services=",".join(service_codes),
        )
        return await codes_of(db, bound)


async def revoke_access(
    app: App, caller: SessionInfo, *, target_id: uuid.UUID | None, codes: list[str]
) -> list[str]:
    # Same rule as granting (admin, own organisation, another account), minus the code.
    account, bound = await _admin_and_target(app, caller, target_id)
    service_codes = known_codes(app, codes)
    async with app.write() as db:
        await db.execute(
            delete(ServiceAccess).where(
                ServiceAccess.account_id == bound, ServiceAccess.service_code.in_(service_codes)
            )
        )
        audit.record(
            db,
            app.clock,
            "service.revoked",
            organization_id=account.organization_id,
            actor=account.id,
            target=bound,
            services=",".join(service_codes),
        )
        return await codes_of(db, bound)

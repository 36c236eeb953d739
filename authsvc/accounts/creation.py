"""Creating organisations and accounts: every account has a valid phone and email, no exception."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import validation
from authsvc.app import App
from authsvc.db import Account, AccountStatus, Organization, Role
from authsvc.db.base import new_id
from authsvc.errors import Failure
from authsvc.phones import parse_phone


async def create_organization(app: App, db: AsyncSession, *, siret: str, name: str) -> Organization:
    siret = validation.siret(siret, "organization_siret")
    name = validation.name(name, "organization_name")
    existing = await db.scalar(select(Organization.id).where(Organization.siret == siret))
    if existing is not None:
        raise Failure(
            "ALREADY_EXISTS",
            "ALREADY_EXISTS",
            f"organisation {siret} exists",
            metadata={"field": "organization_siret"},
        )
    organization = Organization(id=new_id(), siret=siret, name=name, created_at=app.clock.now())
    db.add(organization)
    return organization


async def create_account(
    app: App,
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    login: str,
    display_name: str,
    email: str,
    phone: str,
    role: Role,
    password_hash: str | None,
) -> Account:
    """Add an account to the caller's transaction. Phone and email are both mandatory."""
    login = validation.login(login)
    display_name = validation.name(display_name, "display_name")
    email = validation.email(email)
    parsed = parse_phone(phone, default_region=app.settings.default_region)
    now = app.clock.now()
    account_id = new_id()
    account = Account(
        id=account_id,
        organization_id=organization_id,
        login=login,
        display_name=display_name,
        email=email,
        phone_sealed=app.keys.sealer.seal(parsed.e164, account_id.bytes),
        phone_digest=app.keys.lookup_digest(parsed.e164),
        phone_masked=parsed.masked,
        phone_kind=parsed.kind.value,
        phone_region=parsed.region,
        role=role,
        status=AccountStatus.ACTIVE if password_hash else AccountStatus.PENDING_ACTIVATION,
        password_hash=password_hash,
        created_at=now,
        updated_at=now,
    )
    db.add(account)
    return account

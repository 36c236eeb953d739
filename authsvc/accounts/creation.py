"""Creating organisations and accounts: every account has a valid phone and email, no exception."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, validation
from authsvc.app import App
from authsvc.courier.notices import notify
from authsvc.db import Account, AccountStatus, Organization, Role
from authsvc.db.base import new_id
from authsvc.errors import Failure
from authsvc.flows import grants
from authsvc.otp import random_token, token_digest
from authsvc.phones import mask_e164, mask_email, parse_phone
from authsvc.policies import password_policy
from authsvc.policies.permissions import Action, require_admin
from authsvc.sessions import SessionInfo


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
    importing: bool = False,
) -> Account:
    """Add an account to the caller's transaction. Phone and email are both mandatory.

    `importing` (migration of existing accounts only) keeps an account whose phone is missing
    or invalid, without a phone: it cannot log in until an administrator sets one, and the
    readiness report lists it. Nothing else may create an account without a phone.
    """
    login = validation.login(login)
    display_name = validation.name(display_name, "display_name")
    email = validation.email(email)
    now = app.clock.now()
    account_id = new_id()
    try:
        parsed = parse_phone(phone, default_region=app.settings.default_region)
    except Failure:
        if not importing:
            raise
        account = Account(
            id=account_id,
            organization_id=organization_id,
            login=login,
            display_name=display_name,
            email=email,
            phone_sealed=None,
            phone_digest=None,
            phone_masked=mask_e164(phone) if phone.strip() else None,
            phone_kind=None,
            phone_region=None,
            role=role,
            status=AccountStatus.PENDING_ACTIVATION,
            password_hash=None,
            created_at=now,
            updated_at=now,
        )
        db.add(account)
        return account
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


async def create_with_grant(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    values: grants.ActionValues,
) -> Account:
    """CreateAccount: redeem the grant and create the account pending activation, atomically.

    The activation token goes by email through the outbox; other administrators are told when
    the new account is an administrator.
    """
    async with app.read() as db:
        admin = await db.scalar(select(Account).where(Account.id == caller.account_id))
    assert admin is not None
    require_admin(caller.role)
    now = app.clock.now()
    token = random_token(32)
    try:
        async with app.write() as db:
            await grants.redeem(
                app,
                db,
                caller,
                token=grant_token,
                action=Action.CREATE_ACCOUNT,
                target=None,
                values=values,
            )
            assert values.login and values.display_name and values.email and values.phone
            account = await create_account(
                app,
                db,
                organization_id=admin.organization_id,
                login=values.login,
                display_name=values.display_name,
                email=values.email,
                phone=values.phone,
                role=values.role or Role.MEMBER,
                password_hash=None,
            )
            account.activation_token_digest = token_digest(token)
            account.activation_expires_at = now + timedelta(seconds=app.settings.activation_ttl_s)
            await db.flush()
            notify(app, db, account, "activation", activation_token=token)
            if account.role == Role.ADMIN:
                await _tell_admins_of_new_admin(app, db, account, exclude=admin.id)
            audit.record(
                db,
                app.clock,
                "account.created",
                organization_id=admin.organization_id,
                actor=admin.id,
                target=account.id,
                role=str(account.role),
                email=mask_email(account.email),
                phone=account.phone_masked or "",
            )
    except IntegrityError:
        # Someone took the login between the step-up and now; the grant is not spent.
        raise Failure(
            "ALREADY_EXISTS",
            "ALREADY_EXISTS",
            "this login is taken in your organisation",
            metadata={"field": "login"},
        ) from None
    app.outbox_ready.set()
    return account


async def _tell_admins_of_new_admin(
    app: App, db: AsyncSession, new_admin: Account, *, exclude: uuid.UUID
) -> None:
    admins = await db.scalars(
        select(Account).where(
            Account.organization_id == new_admin.organization_id,
            Account.role == Role.ADMIN,
            Account.status == AccountStatus.ACTIVE,
            Account.id != new_admin.id,
        )
    )
    for admin in admins:
        notify(app, db, admin, "new_admin", admin_name=new_admin.display_name)


async def activate(app: App, *, token: str, password: str) -> uuid.UUID:
    """ActivateAccount: the first password, for a token that is known, unused and unexpired."""
    now = app.clock.now()
    digest = token_digest(token)
    async with app.read() as db:
        account = await db.scalar(select(Account).where(Account.activation_token_digest == digest))
    if (
        account is None
        or account.status != AccountStatus.PENDING_ACTIVATION
        or account.activation_expires_at is None
        or account.activation_expires_at <= now
    ):
        raise Failure(
            "FAILED_PRECONDITION",
            "ACTIVATION_TOKEN_INVALID",
            "this activation link is unknown, used or expired",
        )
    password_policy.check(
        password, login=account.login, other_inputs=[account.display_name, account.email]
    )
    password_hash = await app.passwords.hash_async(password)
    async with app.write() as db:
        done = await db.execute(
            update(Account)
            .where(
                Account.id == account.id,
                Account.activation_token_digest == digest,
                Account.status == AccountStatus.PENDING_ACTIVATION,
            )
            .values(
                password_hash=password_hash,
                status=AccountStatus.ACTIVE,
                activation_token_digest=None,
                activation_expires_at=None,
                updated_at=now,
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Failure(
                "FAILED_PRECONDITION",
                "ACTIVATION_TOKEN_INVALID",
                "this activation link is unknown, used or expired",
            )
        audit.record(
            db,
            app.clock,
            "account.activated",
            organization_id=account.organization_id,
            actor=account.id,
            target=account.id,
        )
    return account.id

"""The first factor: password, then either a session (trusted device) or a pending login flow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, sessions
from authsvc.app import App
from authsvc.db import Account, AccountStatus, Flow, FlowPurpose, FlowStatus, Organization
from authsvc.db.base import new_id
from authsvc.flows import destination, failures
from authsvc.flows.views import IssuedSession, PendingFlowView
from authsvc.policies import cadence, lockout


@dataclass(frozen=True)
class ClientInfo:
    ip_address: str
    user_agent: str


def pending_view(flow: Flow, account: Account) -> PendingFlowView:
    where = destination.of_flow(flow, account)
    return PendingFlowView(
        flow_id=flow.id,
        purpose=FlowPurpose(flow.purpose),
        channels=where.channels,
        default_channel=where.channels[0],
        masked_destination=where.masked,
        expires_at=flow.expires_at,
    )


def open_flow(
    app: App,
    db: AsyncSession,
    purpose: FlowPurpose,
    account: Account,
    client: ClientInfo,
    **binding: Any,
) -> Flow:
    """Add a pending flow to the caller's transaction; `binding` holds step-up/contact fields."""
    now = app.clock.now()
    flow = Flow(
        id=binding.pop("id", None) or new_id(),
        purpose=purpose,
        account_id=account.id,
        status=FlowStatus.PENDING,
        created_at=now,
        expires_at=now + timedelta(seconds=app.settings.flow_ttl_s),
        completed_at=None,
        user_agent=client.user_agent,
        ip_address=client.ip_address,
        challenge_id=None,
        channel=None,
        code_digest=None,
        code_expires_at=None,
        idempotency_key=None,
        send_count=0,
        last_sent_at=None,
        failed_attempts=0,
        **binding,
    )
    db.add(flow)
    return flow


async def login_with_password(
    app: App,
    *,
    siret: str,
    login: str,
    password: str,
    device_token: str | None,
    client: ClientInfo,
) -> IssuedSession | PendingFlowView:
    now = app.clock.now()
    # Rate limits first: cheap, and before any expensive work (argon2). Only the client's
    # network: a stranger's guesses never spend a budget other people need.
    await app.limits.login(now, ip=client.ip_address)
    async with app.read() as db:
        row = (
            await db.execute(
                select(Account, Organization.id)
                .join(Organization, Account.organization_id == Organization.id)
                .where(Organization.siret == siret, Account.login == login)
            )
        ).one_or_none()
        account = row[0] if row else None
        # A locked login is refused whatever the password, known or not (policies/lockout.py).
        await lockout.check_password_lock(app, db, account, siret, login, now)
    # Reserve this check first (known and unknown logins alike): past the allowance of the
    # lock window nothing reaches argon2, however many calls arrive together.
    async with app.write() as db:
        await lockout.reserve_password_check(
            app, db, account.id if account else None, siret, login, now
        )
    # From here the check is settled (a failure counted, the reservation released) even if
    # the caller hangs up: a cancelled call must not be a free guess.
    await lockout.settled(_check_reserved(app, account, siret, login, password, now))
    assert account is not None and account.password_hash is not None
    stored = account.password_hash
    if account.status != AccountStatus.ACTIVE:
        raise failures.account_not_active()
    # The password is right: now the login's, the organisation's and the global budgets.
    await app.limits.login_verified(now, siret=siret, login=login)
    if app.passwords.needs_rehash(stored):
        await _rehash(app, account, stored, password)

    return await after_first_factor(app, account, device_token, client, method="password")


async def after_first_factor(
    app: App, account: Account, device_token: str | None, client: ClientInfo, *, method: str
) -> IssuedSession | PendingFlowView:
    """The same cadence for every first factor: a session on a trusted device, else a code."""
    if account.status != AccountStatus.ACTIVE:
        raise failures.account_not_active()
    async with app.write() as db:
        trusted_at = await cadence.trusted_since(app, db, account.id, device_token)
        if trusted_at is not None:
            # A trusted device stands for the code: not while the second factor is locked.
            # It resets no code counter (only a right code does), but the password's.
            lockout.check_code_lock(app, account, app.clock.now())
            if method == "password":
                await lockout.both_factors_passed_without_code(db, account.id)
            audit.record(
                db,
                app.clock,
                "login.trusted_device",
                organization_id=account.organization_id,
                actor=account.id,
                method=method,
            )
            return await sessions.issue(
                app,
                db,
                account.id,
                last_code_time=trusted_at,
                ip_address=client.ip_address,
                user_agent=client.user_agent,
            )
        destination.account_phone(account)  # no code can reach an account without a phone
        flow = open_flow(app, db, FlowPurpose.LOGIN, account, client)
        audit.record(
            db,
            app.clock,
            f"login.{method}",
            organization_id=account.organization_id,
            actor=account.id,
            flow_id=str(flow.id),
        )
    return pending_view(flow, account)


async def _rehash(app: App, account: Account, stored: str, password: str) -> None:
    """Upgrade a hash made with older parameters; only if nobody changed it meanwhile."""
    new_hash = await app.passwords.hash_async(password)
    async with app.write() as db:
        await db.execute(
            update(Account)
            .where(Account.id == account.id, Account.password_hash == stored)
            .values(password_hash=new_hash)
        )


async def _check_reserved(
    app: App, account: Account | None, siret: str, login: str, password: str, now: datetime
) -> None:
    """The reserved check: argon2, then the verdict recorded; raises unless the password is
    right and no lock was set meanwhile."""
    # Always one argon2 verification, against a dummy hash when the account is unknown.
    stored = account.password_hash if account is not None else None
    right = await app.passwords.verify(stored, password)  # False whenever `stored` is None
    if account is None or not right:
        async with app.write() as db:
            locked = await lockout.password_failure(
                app, db, account.id if account else None, siret, login, now
            )
            audit.record(
                db,
                app.clock,
                "login.password",
                outcome=locked.reason if locked else "INVALID_CREDENTIALS",
                organization_id=account.organization_id if account else None,
                target=account.id if account else None,
            )
        raise locked or failures.invalid_credentials()
    # The right password counts only if no lock was set meanwhile (re-read in the write).
    async with app.write() as db:
        refused = await lockout.password_success(app, db, account.id, now)
    if refused is not None:
        raise refused

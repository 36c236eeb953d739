"""The first factor: password, then either a session (trusted device) or a pending login flow.

A password login costs two database round trips: one before argon2 (the account found and
the check reserved, policies/lockout.py) and one after (its verdict: a wrong password
counted, or a right one settled with the session or the flow it opens, statements.logins)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, metrics, sessions
from authsvc.app import App
from authsvc.db import Account, AccountStatus, Flow, FlowPurpose, FlowStatus
from authsvc.db.base import new_id
from authsvc.db.statements import logins, passwords
from authsvc.errors import Failure
from authsvc.flows import destination, failures
from authsvc.flows.views import IssuedSession, PendingFlowView
from authsvc.policies import cadence, lockout


@dataclass(frozen=True)
class ClientInfo:
    ip_address: str
    user_agent: str


class FirstFactorHolder(Protocol):
    """The account whose first factor passed, as far as what follows needs it (an ORM row, or
    the columns the password login read)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def organization_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def phone_kind(self) -> str | None: ...
    @property
    def phone_masked(self) -> str | None: ...
    @property
    def failed_code_count(self) -> int: ...
    @property
    def code_window_failures(self) -> int: ...
    @property
    def code_locked_until(self) -> datetime | None: ...
    @property
    def security_epoch(self) -> int: ...


def pending_view_of(
    flow_id: uuid.UUID, purpose: FlowPurpose, expires_at: datetime, where: destination.Destination
) -> PendingFlowView:
    """What the caller hears of a pending flow: where its code can go, and until when."""
    return PendingFlowView(
        flow_id=flow_id,
        purpose=purpose,
        channels=where.channels,
        default_channel=where.channels[0],
        masked_destination=where.masked,
        expires_at=expires_at,
    )


def pending_view(flow: Flow, account: Account, others: tuple[str, ...] = ()) -> PendingFlowView:
    """`others`: the channels of the account's other factors (destination.factor_channels)
    for a flow they may answer."""
    return pending_view_of(
        flow.id,
        FlowPurpose(flow.purpose),
        flow.expires_at,
        destination.of_flow(flow, account, others),
    )


def flow_row(
    app: App, purpose: FlowPurpose, account_id: uuid.UUID, client: ClientInfo, **binding: Any
) -> dict[str, Any]:
    """The columns of a new pending flow; `binding` holds step-up/contact fields."""
    now = app.clock.now()
    return {
        "id": binding.pop("id", None) or new_id(),
        "purpose": purpose,
        "account_id": account_id,
        "status": FlowStatus.PENDING,
        "created_at": now,
        "expires_at": now + timedelta(seconds=app.settings.flow_ttl_s),
        "completed_at": None,
        "user_agent": client.user_agent,
        "ip_address": client.ip_address,
        "challenge_id": None,
        "channel": None,
        "code_digest": None,
        "code_expires_at": None,
        "idempotency_key": None,
        "send_count": 0,
        "last_sent_at": None,
        "failed_attempts": 0,
        **binding,
    }


def open_flow(
    app: App,
    db: AsyncSession,
    purpose: FlowPurpose,
    account: Account,
    client: ClientInfo,
    **binding: Any,
) -> Flow:
    """Add a pending flow to the caller's transaction; `binding` holds step-up/contact fields."""
    flow = Flow(**flow_row(app, purpose, account.id, client, **binding))
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
    # One statement finds the account and reserves this check (known and unknown logins
    # alike); a locked login is refused there, whatever the password. Past the allowance of
    # the lock window nothing reaches argon2, however many calls arrive together.
    account = await lockout.reserve_password_check(app, siret, login, now)
    # From here the check is settled (a failure counted, the reservation released) even if
    # the caller hangs up: a cancelled call must not be a free guess.
    return await lockout.settled(
        _check_reserved(app, account, siret, login, password, device_token, client, now)
    )


async def _check_reserved(
    app: App,
    account: passwords.LoginAccount | None,
    siret: str,
    login: str,
    password: str,
    device_token: str | None,
    client: ClientInfo,
    now: datetime,
) -> IssuedSession | PendingFlowView:
    """The reserved check: argon2, then the verdict recorded in one statement; raises unless
    the password is right and no lock was set meanwhile."""
    # Always one argon2 verification, against a dummy hash when the account is unknown.
    stored = account.password_hash if account is not None else None
    right = await app.passwords.verify(stored, password)  # False whenever `stored` is None
    if account is None or not right:
        logged = audit.event(
            app.clock,
            "login.password",
            organization_id=account.organization_id if account else None,
            target=account.id if account else None,
        )
        locked = await lockout.password_failure(
            app, account.id if account else None, siret, login, now, logged
        )
        if locked is not None:
            metrics.lockout("password")
        raise locked or failures.invalid_credentials()
    assert stored is not None
    try:
        if account.status != AccountStatus.ACTIVE:
            raise failures.account_not_active()
        # The password is right: now the login's, the organisation's and the global budgets.
        await app.limits.login_verified(now, siret=siret, login=login)
    except Exception:
        # Refused after all: the check is settled alone (a lock set meanwhile answers first).
        refused = await lockout.password_success(app, account.id, now)
        if refused is not None:
            raise refused from None
        raise
    if app.passwords.needs_rehash(stored):
        await _rehash(app, account.id, stored, password)
    return await after_first_factor(
        app, account, account, device_token, client, method="password", settles_password=True
    )


async def after_first_factor(
    app: App,
    account: FirstFactorHolder,
    factors: destination.HasFactors,
    device_token: str | None,
    client: ClientInfo,
    *,
    method: str,
    settles_password: bool = False,
) -> IssuedSession | PendingFlowView:
    """The same cadence for every first factor: a session on a trusted device, else a code.
    One statement decides it; with `settles_password` it also settles the reserved password
    check (its reservation released, the lock re-read: a lock set meanwhile refuses)."""
    if account.status != AccountStatus.ACTIVE:
        raise failures.account_not_active()
    now = app.clock.now()
    # A trusted device stands for the code: not while the second factor is locked. It resets
    # no code counter (only a right code does), but the password's escalation.
    code_locked: Failure | None = None
    try:
        lockout.check_code_lock(app, account, now)
    except Failure as locked:
        code_locked = locked
    # No code can reach an account without a phone: no flow for it.
    where: destination.Destination | None = None
    not_ready: Failure | None = None
    try:
        # The first factor's lookup read the account's other factors (the same trip).
        where = destination.account_phone(
            account, destination.factor_channels(app.settings, factors)
        )
    except Failure as failure:
        not_ready = failure
    # Both outcomes are prepared; the statement writes the one that applies. The session's
    # last code time is the device's last verification (the statement writes it).
    issued, session = sessions.new(
        app,
        account.id,
        last_code_time=now,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    flow = flow_row(app, FlowPurpose.LOGIN, account.id, client) if where is not None else None
    verdict = await app.db.statement(
        logins.first_factor_passed,
        logins.FirstFactorPassed(
            account_id=account.id,
            now=now,
            code_failure_hard_bound=app.settings.code_failure_hard_bound,
            security_epoch=account.security_epoch,
            settles_password=settles_password,
            device_digest=cadence.presented_device(app, device_token),
            trust_may_stand=code_locked is None,
            session=session,
            trusted_logged=audit.event(
                app.clock,
                "login.trusted_device",
                organization_id=account.organization_id,
                actor=account.id,
                method=method,
            ),
            flow=flow,
            flow_logged=None
            if flow is None
            else audit.event(
                app.clock,
                f"login.{method}",
                organization_id=account.organization_id,
                actor=account.id,
                flow_id=str(flow["id"]),
            ),
        ),
    )
    if not verdict.found:
        raise failures.invalid_credentials()  # the account went away meanwhile
    if settles_password:
        refused = lockout.password_verdict(verdict.password_locked_until, now)
        if refused is not None:
            raise refused
    if not verdict.current:
        # The password or phone changed while this first factor was checked: what it proved
        # (an old password, a device trust since revoked) opens nothing. The same answer as a
        # wrong password, so the caller learns nothing of the change.
        raise failures.invalid_credentials()
    if verdict.trusted_at is not None:
        if code_locked is not None:
            raise code_locked
        # Locked during the argon2 check: the statement wrote no session.
        assert verdict.code is not None
        lockout.check_code_lock(app, verdict.code, now)
        return issued
    if flow is None or where is None:
        raise not_ready or failures.account_not_ready()
    return pending_view_of(flow["id"], FlowPurpose.LOGIN, flow["expires_at"], where)


async def _rehash(app: App, account_id: uuid.UUID, stored: str, password: str) -> None:
    """Upgrade a hash made with older parameters; only if nobody changed it meanwhile."""
    new_hash = await app.passwords.hash_async(password)
    await app.db.statement(passwords.rehash, account_id, stored, new_hash)

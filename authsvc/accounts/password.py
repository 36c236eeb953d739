"""ChangePassword: a grant, the current password, a policy-compliant new one.

Rate limited per IP and account; the grant is checked before the password (a missing grant
answers the same whatever the password); the password check is reserved like Login's
(policies/lockout.py), so concurrent calls cannot run more checks than the lock allows.

The change revokes the account's trusted devices (the next login needs a code) and every other
session, in the same transaction that redeems the grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from authsvc import audit
from authsvc.accounts import revocation
from authsvc.app import App
from authsvc.courier.notices import notify
from authsvc.db import Account
from authsvc.flows import failures, grants
from authsvc.flows.login import ClientInfo
from authsvc.policies import lockout, password_policy
from authsvc.policies.permissions import Action
from authsvc.sessions import SessionInfo


@dataclass(frozen=True)
class PasswordChanged:
    revoked_sessions: int
    revoked_devices: int


async def change_password(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    current: str,
    new: str,
    client: ClientInfo,
) -> PasswordChanged:
    now = app.clock.now()
    # Rate limits first, before any expensive work (argon2), like Login's.
    await app.limits.change_password(now, ip=client.ip_address, account_id=str(caller.account_id))
    async with app.read() as db:
        account = await db.scalar(select(Account).where(Account.id == caller.account_id))
        assert account is not None and account.password_hash is not None
        # The grant before the password: without a grant that this session may spend, the
        # answer is the grant's and nothing about the password is checked or revealed.
        await grants.ensure_redeemable(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.CHANGE_OWN_PASSWORD,
            target=account.id,
            values=grants.ActionValues(),
        )
        # The current password is a password check like Login's: same lock, same counter, so
        # a stolen session cannot be used to guess it without bound.
        lockout.check_password_lock(account.password_locked_until, now)
    password_policy.check(
        new,
        login=account.login,
        other_inputs=[account.display_name, account.email],
        field="new_password",
    )
    await lockout.reserve_password_check(app, caller.organization_siret, account.login, now)
    # Settled even if the caller hangs up (a cancelled call is no free guess).
    await lockout.settled(_check_reserved(app, account, caller, current, now))
    new_hash = await app.passwords.hash_async(new)
    async with app.write() as db:
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.CHANGE_OWN_PASSWORD,
            target=account.id,
            values=grants.ActionValues(),
        )
        # The new hash with the security epoch, then what trusted the old password ends.
        ended = await revocation.end_trust(
            db,
            account.id,
            now,
            keep_session=caller.session_id,
            account_values={"password_hash": new_hash, "updated_at": now},
        )
        notify(app, db, account, "password_changed")
        audit.record(
            db,
            app.clock,
            "password.changed",
            organization_id=account.organization_id,
            actor=account.id,
            target=account.id,
        )
    app.outbox_ready.set()
    return PasswordChanged(
        revoked_sessions=ended.sessions,
        revoked_devices=ended.devices,
    )


async def _check_reserved(
    app: App, account: Account, caller: SessionInfo, current: str, now: datetime
) -> None:
    """The reserved check of the current password: argon2, then the verdict recorded."""
    assert account.password_hash is not None
    if not await app.passwords.verify(account.password_hash, current):
        locked = await lockout.password_failure(
            app, account.id, caller.organization_siret, account.login, now
        )
        raise locked or failures.invalid_credentials()
    refused = await lockout.password_success(app, account.id, now)
    if refused is not None:
        raise refused

"""The first factor: password, then either a session (trusted device) or a pending login flow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update

from authsvc import sessions
from authsvc.app import App
from authsvc.db import Account, AccountStatus, Flow, FlowPurpose, FlowStatus, Organization
from authsvc.flows import failures
from authsvc.flows.views import IssuedSession, PendingFlowView
from authsvc.phones import CHANNELS_BY_KIND, PhoneKind
from authsvc.policies import cadence


@dataclass(frozen=True)
class ClientInfo:
    ip_address: str
    user_agent: str


def pending_view(flow: Flow, account: Account) -> PendingFlowView:
    channels = CHANNELS_BY_KIND[PhoneKind(account.phone_kind)]
    return PendingFlowView(
        flow_id=flow.id,
        purpose=FlowPurpose(flow.purpose),
        channels=channels,
        default_channel=channels[0],
        masked_destination=account.phone_masked,
        expires_at=flow.expires_at,
    )


async def login_with_password(
    app: App,
    *,
    siret: str,
    login: str,
    password: str,
    device_token: str | None,
    client: ClientInfo,
) -> IssuedSession | PendingFlowView:
    async with app.read() as db:
        account = await db.scalar(
            select(Account)
            .join(Organization, Account.organization_id == Organization.id)
            .where(Organization.siret == siret, Account.login == login)
        )
    # Always one argon2 verification, against a dummy hash when the account is unknown.
    stored = account.password_hash if account is not None else None
    if not await app.passwords.verify(stored, password) or account is None or stored is None:
        raise failures.invalid_credentials()
    if account.status != AccountStatus.ACTIVE:
        raise failures.account_not_active()
    if app.passwords.needs_rehash(stored):
        await _rehash(app, account, stored, password)

    now = app.clock.now()
    async with app.write() as db:
        trusted_at = await cadence.trusted_since(app, db, account.id, device_token)
        if trusted_at is not None:
            return await sessions.issue(
                app,
                db,
                account.id,
                last_code_time=trusted_at,
                ip_address=client.ip_address,
                user_agent=client.user_agent,
            )
        flow = Flow(
            purpose=FlowPurpose.LOGIN,
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
        )
        db.add(flow)
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

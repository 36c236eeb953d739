"""Passkeys of an account: registering one (a sensitive action), listing them beside the other
factors, removing one (a sensitive action, the holder's or an administrator's, as for an
authenticator app: accounts/factors.py).

Registration redeems its step-up grant when it starts (BeginPasskeyRegistration), in the
transaction that keeps the ceremony's challenge; the finish then needs the same account's
session and that challenge, taken once. Several passkeys per account, each named, at most
`max_passkeys_per_account` (a disabled one counts until it is removed): checked when the
registration starts (before the grant: a refusal spends nothing) and decided when it finishes,
in the transaction that stores the credential, behind the account's row lock (two
registrations at the cap: one wins).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.accounts import factors
from authsvc.accounts.factors import FactorView
from authsvc.app import App
from authsvc.courier import notices
from authsvc.courier.notices import notify
from authsvc.db import Account, PasskeyCredential
from authsvc.db.statements import passkeys as statements
from authsvc.errors import Failure, invalid_field
from authsvc.flows import grants, webauthn_rp
from authsvc.policies.permissions import Action
from authsvc.sessions import SessionInfo

KIND = "passkey"
# The time a browser gets to create a passkey: long enough for a security key's PIN.
REGISTRATION_TTL_S = 300


@dataclass(frozen=True)
class Registration:
    ceremony_id: uuid.UUID
    options_json: str


def ceremony_invalid() -> Failure:
    return Failure(
        "NOT_FOUND",
        "PASSKEY_CEREMONY_INVALID",
        "no such passkey ceremony in progress (unknown, expired or answered): start again",
    )


def rejected(metadata: dict[str, str] | None = None) -> Failure:
    """`metadata`: a counted assertion's attempts_remaining."""
    return Failure(
        "UNAUTHENTICATED",
        "PASSKEY_REJECTED",
        "the passkey's answer does not verify",
        metadata=metadata,
    )


def too_many(limit: int) -> Failure:
    return Failure(
        "FAILED_PRECONDITION",
        "FACTOR_LIMIT_REACHED",
        f"this account has {limit} passkeys already, the most it may hold: remove one first",
        metadata={"limit": str(limit)},
    )


async def _count(db: AsyncSession, account_id: uuid.UUID) -> int:
    return int(
        (await db.execute(statements.COUNT_OF_ACCOUNT, {"p_account_id": account_id})).scalar_one()
    )


def malformed(error: webauthn_rp.Malformed) -> Failure:
    return invalid_field("credential_json", f"not a PublicKeyCredential's JSON: {error}")


def parse_ceremony_id(value: str) -> uuid.UUID:
    return factors.parse_factor_id(value, "ceremony_id")


async def begin_registration(app: App, caller: SessionInfo, *, grant_token: str) -> Registration:
    webauthn_rp.require_configured(app.settings)
    now = app.clock.now()
    ceremony_id = uuid.uuid4()
    limit = app.settings.max_passkeys_per_account
    async with app.write() as db:
        account = await db.get_one(Account, caller.account_id)
        if await _count(db, account.id) >= limit:
            raise too_many(limit)  # before the grant: a refusal spends nothing
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.ENROLL_FACTOR,
            target=account.id,
            values=grants.ActionValues(),
        )
        existing = (
            await db.scalars(
                select(PasskeyCredential.credential_id).where(
                    PasskeyCredential.account_id == account.id
                )
            )
        ).all()
        # The user handle is the account id: stable, opaque, no personal data (WebAuthn asks
        # for no e-mail or name in it).
        options = webauthn_rp.registration_options(
            app.settings,
            user_id=account.id.bytes,
            user_name=account.login,
            exclude=list(existing),
            timeout_s=REGISTRATION_TTL_S,
        )
        ceremony = statements.Ceremony(
            id=ceremony_id,
            account_id=account.id,
            flow_id=None,
            kind=statements.REGISTRATION,
            challenge=options.challenge,
            created_at=now,
            expires_at=now + timedelta(seconds=REGISTRATION_TTL_S),
        )
        # In the grant's transaction: the account's earlier unfinished registrations go.
        await db.run_sync(lambda sync: statements.start_registration(sync.connection(), ceremony))
        audit.record(
            db,
            app.clock,
            "factor.enrolment_started",
            organization_id=account.organization_id,
            actor=account.id,
            target=account.id,
            kind=KIND,
        )
    return Registration(ceremony_id, options.json)


async def finish_registration(
    app: App, caller: SessionInfo, *, ceremony_id: uuid.UUID, credential_json: str, name: str
) -> FactorView:
    webauthn_rp.require_configured(app.settings)
    try:
        credential = webauthn_rp.parse_registration(credential_json)
    except webauthn_rp.Malformed as error:
        raise malformed(error) from None
    now = app.clock.now()
    taken = statements.Consume(ceremony_id, caller.account_id, None, now)
    challenge = await app.db.write(statements.consume, taken)
    if challenge is None:
        raise ceremony_invalid()
    try:
        new = webauthn_rp.check_registration(app.settings, credential, challenge)
    except webauthn_rp.Malformed as error:
        raise malformed(error) from None
    except webauthn_rp.Rejected:
        async with app.write() as db:
            audit.record(
                db,
                app.clock,
                "factor.confirmation_failed",
                outcome="PASSKEY_REJECTED",
                organization_id=caller.organization_id,
                actor=caller.account_id,
                target=caller.account_id,
                kind=KIND,
            )
        raise rejected() from None
    factor_id = uuid.uuid4()
    limit = app.settings.max_passkeys_per_account
    try:
        async with app.write() as db:
            # The cap's decision: the account's row locked, then the count (statements).
            await db.execute(statements.LOCK_ACCOUNT, {"p_account_id": caller.account_id})
            if await _count(db, caller.account_id) >= limit:
                raise too_many(limit)
            db.add(
                PasskeyCredential(
                    id=factor_id,
                    account_id=caller.account_id,
                    credential_id=new.credential_id,
                    public_key=new.public_key,
                    sign_count=new.sign_count,
                    name=name,
                    transports=new.transports,
                    created_at=now,
                    last_used_at=None,
                    disabled_at=None,
                )
            )
            await db.flush()
            # A new way in: the holder hears of it (as of the app's, accounts/factors.py).
            holder = await db.get_one(Account, caller.account_id)
            notify(app, db, holder, "passkey_added", when=notices.when(now))
            audit.record(
                db,
                app.clock,
                "factor.confirmed",
                organization_id=caller.organization_id,
                actor=caller.account_id,
                target=caller.account_id,
                kind=KIND,
                factor_id=str(factor_id),
            )
    except IntegrityError:
        # credential_id is unique: this authenticator's credential is registered already.
        raise Failure(
            "ALREADY_EXISTS", "FACTOR_ALREADY_ENROLLED", "this passkey is registered already"
        ) from None
    app.outbox_ready.set()
    return FactorView(factor_id, KIND, name, now, None)


async def list_passkeys(
    app: App, caller: SessionInfo, account_id: uuid.UUID | None
) -> list[FactorView]:
    """The holder's passkeys (same permission as ListFactors: accounts/factors.py), the
    disabled ones too (with when): their holder is to see them and remove them."""
    holder = await factors.factor_holder(app, caller, account_id)
    async with app.read() as db:
        rows = (
            await db.execute(
                select(
                    PasskeyCredential.id,
                    PasskeyCredential.name,
                    PasskeyCredential.created_at,
                    PasskeyCredential.last_used_at,
                    PasskeyCredential.disabled_at,
                )
                .where(PasskeyCredential.account_id == holder.id)
                .order_by(PasskeyCredential.created_at, PasskeyCredential.id)
            )
        ).all()
    return [
        FactorView(id_, KIND, name, created, used, disabled)
        for id_, name, created, used, disabled in rows
    ]


async def remove_passkey(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    factor_id: uuid.UUID,
    account_id: uuid.UUID | None,
) -> int:
    """Remove a passkey: as an authenticator app (factors.remove)."""
    return await factors.remove(
        app,
        caller,
        grant_token=grant_token,
        factor_id=factor_id,
        account_id=account_id,
        table=PasskeyCredential,
        kind=KIND,
        notice="passkey_removed",
    )


async def owns(app: App, factor_id: uuid.UUID) -> bool:
    """Whether the id is a passkey's (RemoveFactor then removes it here, else as an app)."""
    async with app.read() as db:
        found = await db.scalar(
            select(PasskeyCredential.id).where(PasskeyCredential.id == factor_id)
        )
    return found is not None

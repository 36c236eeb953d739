"""Second factors of an account: enrolling an authenticator app (TOTP), confirming it,
listing the factors, removing one.

Enrolment and removal are sensitive actions: each redeems a step-up grant in the transaction
that makes the change, so a refusal (a factor already enrolled, no such factor) spends nothing.
The secret is drawn here (160 bits from the OS, RFC 4226's recommended length), shown once in
BeginTotpEnrollment's answer and sealed at rest; nothing else ever returns it. A factor counts
only once its holder proved one code from it (ConfirmTotpEnrollment), and that code's time step
is stored so it cannot then complete a flow as well. An account holds at most one confirmed app
and at most one pending enrolment (partial unique indexes, db/factor.py): a new enrolment
replaces the pending one.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

import segno
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from authsvc import audit, validation
from authsvc.accounts import revocation
from authsvc.app import App
from authsvc.courier import notices
from authsvc.courier.notices import notify
from authsvc.db import Account, PasskeyCredential, SecondFactor
from authsvc.db.locks import ACCOUNT_ROW
from authsvc.db.statements import factors as statements
from authsvc.errors import Failure, invalid_field
from authsvc.flows import grants, totp
from authsvc.flows.login import ClientInfo
from authsvc.otp import verify_totp
from authsvc.policies.permissions import Action, denied, require_admin
from authsvc.sessions import SessionInfo

SECRET_BYTES = 20
# How long a drawn secret waits for its first code: long enough to scan and type, short enough
# that a forgotten enrolment does not linger.
ENROLMENT_TTL_S = 600
NAME_MAX = 64


@dataclass(frozen=True)
class Enrolment:
    factor_id: uuid.UUID
    otpauth_uri: str
    secret_base32: str
    qr_code_svg: str
    expires_at: datetime


@dataclass(frozen=True)
class FactorView:
    """A factor as it is shown: never its secret."""

    id: uuid.UUID
    kind: str
    name: str
    confirmed_at: datetime
    last_used_at: datetime | None
    # A passkey disabled when a clone of it was detected: it answers no flow; remove it.
    disabled_at: datetime | None = None


def factor_not_found() -> Failure:
    return Failure("NOT_FOUND", "FACTOR_NOT_FOUND", "no such second factor on this account")


def already_enrolled() -> Failure:
    return Failure(
        "ALREADY_EXISTS",
        "FACTOR_ALREADY_ENROLLED",
        "this account already has an authenticator app: remove it first",
    )


def parse_factor_id(value: str, field: str = "factor_id") -> uuid.UUID:
    return validation.factor_id(value, field)


def factor_name(value: str) -> str:
    """1 to 64 characters, trimmed (validation.name's rules for a display name)."""
    name = validation.name(value, "name")
    if len(name) > NAME_MAX:
        raise invalid_field("name", f"at most {NAME_MAX} characters")
    return name


def otpauth_uri(issuer: str, account_label: str, secret_base32: str) -> str:
    """The Key Uri Format that authenticator apps import (issuer both in the label and as a
    parameter, as Google Authenticator's documentation asks). The label's separator is a
    literal ":"; a colon inside the issuer or the account is percent-encoded (%3A)."""
    label = f"{quote(issuer, safe='')}:{quote(account_label, safe='')}"
    query = urlencode(
        {
            "secret": secret_base32,
            "issuer": issuer,
            "algorithm": totp.ALGORITHM.upper(),
            "digits": totp.DIGITS,
            "period": totp.STEP_S,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def qr_svg(uri: str) -> str:
    return segno.make(uri, error="m").svg_inline(scale=4)


async def begin_totp(app: App, caller: SessionInfo, *, grant_token: str, name: str) -> Enrolment:
    now = app.clock.now()
    secret = os.urandom(SECRET_BYTES)
    secret_base32 = base64.b32encode(secret).decode("ascii").rstrip("=")
    factor_id = uuid.uuid4()
    async with app.write() as db:
        # The account's row locked (PostgreSQL; SQLite writers are serialised): concurrent
        # enrolments of one account queue here, so each replaces the one before it and the
        # partial unique index (one pending enrolment per account) never refuses one.
        account = await db.get_one(Account, caller.account_id, with_for_update=ACCOUNT_ROW)
        confirmed = await db.scalar(
            select(SecondFactor.id).where(
                SecondFactor.account_id == account.id,
                SecondFactor.kind == statements.TOTP,
                SecondFactor.confirmed_at.is_not(None),
            )
        )
        if confirmed is not None:
            raise already_enrolled()  # before the grant: a refusal spends nothing
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.ENROLL_FACTOR,
            target=account.id,
            values=grants.ActionValues(),
        )
        # An unconfirmed enrolment is replaced: only the latest secret drawn can be confirmed.
        await db.execute(
            delete(SecondFactor).where(
                SecondFactor.account_id == account.id,
                SecondFactor.kind == statements.TOTP,
                SecondFactor.confirmed_at.is_(None),
            )
        )
        db.add(
            SecondFactor(
                id=factor_id,
                account_id=account.id,
                kind=statements.TOTP,
                name=name,
                secret_sealed=app.keys.sealer.seal(secret_base32, totp.secret_aad(factor_id)),
                confirmed_at=None,
                last_used_step=None,
                created_at=now,
                last_used_at=None,
            )
        )
        audit.record(
            db,
            app.clock,
            "factor.enrolment_started",
            organization_id=account.organization_id,
            actor=account.id,
            target=account.id,
            kind=statements.TOTP,
            factor_id=str(factor_id),
        )
        label = account.login
    uri = otpauth_uri(app.settings.service_name, label, secret_base32)
    return Enrolment(
        factor_id=factor_id,
        otpauth_uri=uri,
        secret_base32=secret_base32,
        qr_code_svg=qr_svg(uri),
        expires_at=now + timedelta(seconds=ENROLMENT_TTL_S),
    )


async def confirm_totp(
    app: App, caller: SessionInfo, *, factor_id: uuid.UUID, code: str, client: ClientInfo
) -> FactorView:
    """The first code proves the app holds the secret: only then the factor counts.

    Guessing here gains nothing (whoever began the enrolment was shown the secret), so a wrong
    code is refused and recorded, and the attempts are limited like Verify's (per IP and per
    account), without touching the account's code lock.
    """
    now = app.clock.now()
    await app.limits.verify(now, ip=client.ip_address, account_id=str(caller.account_id))
    fresh_since = now - timedelta(seconds=ENROLMENT_TTL_S)
    async with app.read() as db:
        pending = await db.scalar(
            select(SecondFactor).where(
                SecondFactor.id == factor_id,
                SecondFactor.account_id == caller.account_id,
                SecondFactor.kind == statements.TOTP,
                SecondFactor.confirmed_at.is_(None),
                SecondFactor.created_at > fresh_since,
            )
        )
    if pending is None:
        raise factor_not_found()
    step = verify_totp(
        totp.open_secret(app, pending.id, pending.secret_sealed),
        code,
        now.timestamp(),
        window=totp.WINDOW,
        step=totp.STEP_S,
        digits=totp.DIGITS,
        algorithm=totp.ALGORITHM,
    )
    if step is None:
        async with app.write() as db:
            audit.record(
                db,
                app.clock,
                "factor.confirmation_failed",
                outcome="CODE_MISMATCH",
                organization_id=caller.organization_id,
                actor=caller.account_id,
                target=caller.account_id,
                kind=statements.TOTP,
                factor_id=str(factor_id),
            )
        raise Failure("UNAUTHENTICATED", "CODE_MISMATCH", "wrong code")
    try:
        async with app.write() as db:
            confirmed = await db.execute(
                statements.CONFIRM,
                {
                    "t_factor_id": factor_id,
                    "t_account_id": caller.account_id,
                    "t_fresh_since": fresh_since,
                    "t_now": now,
                    "t_step": step,
                },
            )
            if confirmed.first() is None:
                raise factor_not_found()  # replaced, confirmed or expired meanwhile
            # A new way in that answers every later step-up: the holder hears of it (whoever
            # held the session and the phone for one code must not add one silently).
            holder = await db.get_one(Account, caller.account_id)
            notify(app, db, holder, "factor_added", when=notices.when(now))
            audit.record(
                db,
                app.clock,
                "factor.confirmed",
                organization_id=caller.organization_id,
                actor=caller.account_id,
                target=caller.account_id,
                kind=statements.TOTP,
                factor_id=str(factor_id),
            )
    except IntegrityError:
        # The partial unique index: another enrolment of this account was confirmed first.
        raise already_enrolled() from None
    app.outbox_ready.set()
    return FactorView(factor_id, statements.TOTP, pending.name, now, None)


async def factor_holder(app: App, caller: SessionInfo, account_id: uuid.UUID | None) -> Account:
    """The factors' holder: the caller, or (for an administrator) a member of the same
    organisation. Another organisation's account answers as an unknown one does."""
    async with app.read() as db:
        if account_id is None or account_id == caller.account_id:
            return await db.get_one(Account, caller.account_id)
        require_admin(caller.role)
        holder = await db.get(Account, account_id)
    if holder is None or holder.organization_id != caller.organization_id:
        raise denied("no such account in your organisation")
    return holder


async def list_factors(
    app: App, caller: SessionInfo, account_id: uuid.UUID | None
) -> list[FactorView]:
    holder = await factor_holder(app, caller, account_id)
    async with app.read() as db:
        rows = (
            await db.execute(
                select(
                    SecondFactor.id,
                    SecondFactor.kind,
                    SecondFactor.name,
                    SecondFactor.confirmed_at,
                    SecondFactor.last_used_at,
                )
                .where(SecondFactor.account_id == holder.id, SecondFactor.confirmed_at.is_not(None))
                .order_by(SecondFactor.confirmed_at, SecondFactor.id)
            )
        ).all()
    shown = []
    for id_, kind, name, confirmed, used in rows:
        assert confirmed is not None  # the WHERE clause
        shown.append(FactorView(id_, kind, name, confirmed, used))
    return shown


async def remove_factor(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    factor_id: uuid.UUID,
    account_id: uuid.UUID | None,
) -> int:
    """Remove an authenticator app (see `remove`)."""
    return await remove(
        app,
        caller,
        grant_token=grant_token,
        factor_id=factor_id,
        account_id=account_id,
        table=SecondFactor,
        kind=statements.TOTP,
        notice="factor_removed",
    )


async def remove(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    factor_id: uuid.UUID,
    account_id: uuid.UUID | None,
    table: type[SecondFactor] | type[PasskeyCredential],
    kind: str,
    notice: str,
) -> int:
    """Remove a second factor of any kind (`table` holds it): the grant (made for this
    factor) redeemed in the transaction that deletes (a refusal spends nothing), the holder's
    sessions revoked (but the caller's own when the holder removes it), the holder told by
    email (`notice`).
    Returns how many sessions were revoked."""
    holder = await factor_holder(app, caller, account_id)
    own = holder.id == caller.account_id
    now = app.clock.now()
    async with app.write() as db:
        # The holder's row first, as a passkey's clone detection and every completion take it
        # (then the factor's): a removal racing them queues instead of deadlocking.
        await db.get_one(Account, holder.id, with_for_update=ACCOUNT_ROW)
        name = await db.scalar(
            select(table.name).where(table.id == factor_id, table.account_id == holder.id)
        )
        if name is None:
            raise factor_not_found()  # before the grant: a refusal spends nothing
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.REMOVE_FACTOR,
            target=holder.id,
            # Bound to this factor: a grant the holder gave to remove another one does not
            # remove this one (GRANT_VALUES_MISMATCH).
            values=grants.ActionValues(factor_id=str(factor_id)),
        )
        removed = await db.execute(
            delete(table).where(table.id == factor_id, table.account_id == holder.id)
        )
        if removed.rowcount != 1:  # type: ignore[attr-defined]
            raise factor_not_found()  # removed meanwhile: the grant is not spent either
        # The factor's trust ends with it: sessions (but the remover's own), device tokens
        # (they stood for this factor), pending flows, and the security epoch.
        ended = await revocation.end_trust(
            db, holder.id, now, keep_session=caller.session_id if own else None
        )
        revoked = ended.sessions
        notify(
            app,
            db,
            holder,
            notice,
            factor_name=name,
            by="par vous-même" if own else "par un administrateur de votre organisation",
        )
        audit.record(
            db,
            app.clock,
            "factor.removed",
            organization_id=holder.organization_id,
            actor=caller.account_id,
            target=holder.id,
            kind=kind,
            factor_id=str(factor_id),
            by="holder" if own else "admin",
        )
    app.outbox_ready.set()
    return revoked

"""Who administers my organisation, and which accounts are not ready for enforcement."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field, replace

from sqlalchemy import ColumnElement, and_, select

from authsvc.app import App
from authsvc.db import Account, AccountStatus, Organization, Role
from authsvc.db.statements import factors
from authsvc.phones import mask_email
from authsvc.policies.permissions import require_admin
from authsvc.sessions import SessionInfo


@dataclass(frozen=True)
class AdministratorView:
    display_name: str
    masked_email: str
    masked_phone: str


async def administrators(app: App, caller: SessionInfo) -> tuple[str, list[AdministratorView]]:
    """Any signed-in member may ask: names and masked contacts of the active administrators."""
    return await administrators_of(app, caller.organization_id)


async def administrators_of(
    app: App, organization_id: uuid.UUID
) -> tuple[str, list[AdministratorView]]:
    """The organisation's name and its active administrators, as its members see them."""
    async with app.read() as db:
        name = await db.scalar(select(Organization.name).where(Organization.id == organization_id))
        admins = await db.scalars(
            select(Account)
            .where(
                Account.organization_id == organization_id,
                Account.role == Role.ADMIN,
                Account.status == AccountStatus.ACTIVE,
            )
            .order_by(Account.display_name)
        )
        views = [
            AdministratorView(a.display_name, mask_email(a.email), a.phone_masked or "")
            for a in admins
        ]
    return name or "", views


# The second factors beyond the phone's codes, in FactorKind's order. Information only: the
# rules that make an account ready (`account_issues`) name none of them, so an account with
# only SMS or voice codes is ready and one with an app but no verified phone is not.
TOTP = factors.TOTP
PASSKEY = "passkey"


@dataclass(frozen=True)
class AccountIssue:
    account_id: uuid.UUID
    login: str
    display_name: str
    issue: str  # no_phone | invalid_phone | phone_unverified | pending_activation
    # Information, not part of readiness: the account's other second factors (TOTP, PASSKEY).
    other_factors: tuple[str, ...] = ()


@dataclass(frozen=True)
class OtherFactors:
    """Information, not part of readiness: how many accounts have each other second factor."""

    # A confirmed authenticator app (a pending enrolment is none).
    with_authenticator_app: int = 0
    # At least one passkey.
    with_passkey: int = 0


@dataclass
class Readiness:
    accounts_total: int = 0
    with_verified_phone: int = 0
    mobile: int = 0
    landline: int = 0
    without_phone: int = 0
    pending_activation: int = 0
    administrators: int = 0
    reachable_administrators: int = 0
    # Active administrators whose phone received a code: they can act on the switch day.
    ready_administrators: int = 0
    # Accounts with no issue at all.
    ready: int = 0
    issues: list[AccountIssue] = field(default_factory=list)
    # Counted apart from everything above: no other factor changes `ready`.
    other_factors: OtherFactors = field(default_factory=OtherFactors)


ISSUES = ("no_phone", "invalid_phone", "phone_unverified", "pending_activation")


def account_issues(account: Account) -> list[str]:
    """What keeps this account from signing in with a code once enforcement starts."""
    issues: list[str] = []
    if account.phone_kind is None:
        issues.append("invalid_phone" if account.phone_masked else "no_phone")
    elif account.phone_verified_at is None:
        issues.append("phone_unverified")
    if account.status == AccountStatus.PENDING_ACTIVATION:
        issues.append("pending_activation")
    return issues


def other_factors(has_authenticator_app: object, has_passkey: object) -> tuple[str, ...]:
    """The kinds an account row's EXISTS columns say it has (SQLite answers 0/1)."""
    return tuple(
        kind for kind, has in ((TOTP, has_authenticator_app), (PASSKEY, has_passkey)) if has
    )


async def readiness(app: App, organization_id: uuid.UUID) -> Readiness:
    """What the organisation must fix before two-factor enforcement."""
    async with app.read() as db:
        rows = (
            await db.execute(
                select(Account, *factors.other_factors(Account.id))
                .where(Account.organization_id == organization_id)
                .order_by(Account.login)
            )
        ).all()
    report = Readiness(accounts_total=len(rows))
    kinds = Counter(account.phone_kind for account, _, _ in rows)
    report.mobile, report.landline = kinds["mobile"], kinds["landline"]
    extra: Counter[str] = Counter()
    for account, has_app, has_passkey in rows:
        issues = account_issues(account)
        others = other_factors(has_app, has_passkey)
        extra.update(others)
        if account.phone_kind is None:
            report.without_phone += 1
        elif account.phone_verified_at is not None:
            report.with_verified_phone += 1
        if account.status == AccountStatus.PENDING_ACTIVATION:
            report.pending_activation += 1
        if account.role == Role.ADMIN and account.status == AccountStatus.ACTIVE:
            report.administrators += 1
            report.reachable_administrators += account.phone_kind is not None
            report.ready_administrators += not issues
        report.ready += not issues
        report.issues += [
            AccountIssue(account.id, account.login, account.display_name, issue, others)
            for issue in issues
        ]
    report.other_factors = OtherFactors(extra[TOTP], extra[PASSKEY])
    return report


def readiness_counts(report: Readiness) -> Readiness:
    """The counts alone, without the accounts (what a relay may read of a member)."""
    return replace(report, issues=[])


async def readiness_for(app: App, caller: SessionInfo) -> Readiness:
    require_admin(caller.role)
    return await readiness(app, caller.organization_id)


def ready_clause() -> ColumnElement[bool]:
    """`account_issues(account) == []` as SQL, for decisions taken in one statement."""
    return and_(
        Account.phone_kind.is_not(None),
        Account.phone_verified_at.is_not(None),
        Account.status != AccountStatus.PENDING_ACTIVATION,
    )

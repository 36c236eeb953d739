"""Relays (centres de gestion) and what their staff may read of their members.

An operator designates a relay and its first members (`authsvc relay add`); the relay's
administrators may then add and remove members over the API, each change redeeming a step-up
grant bound to the exact SIRETs. The relay's staff (its signed-in accounts) read, per member: the
readiness counts, the administrators as the member's own staff see them (names, masked contacts)
and the campaign's progress. Never an account's details, never an action on one, never an audit
trail. Every read is recorded in the relay's trail, and every membership change in both trails.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, validation
from authsvc.accounts import directory
from authsvc.app import App
from authsvc.campaigns import progress
from authsvc.db import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Organization,
    RecipientStatus,
    Relay,
    RelayMember,
)
from authsvc.errors import Failure
from authsvc.flows import grants
from authsvc.policies.permissions import Action, require_admin
from authsvc.sessions import SessionInfo


def not_a_relay() -> Failure:
    return Failure(
        "PERMISSION_DENIED",
        "NOT_A_RELAY",
        "your organisation is not a relay (an operator designates relays)",
    )


def unknown_organizations(sirets: Sequence[str]) -> Failure:
    return Failure(
        "NOT_FOUND",
        "ORGANIZATION_UNKNOWN",
        f"no organisation with SIRET {', '.join(sirets[:5])}",
        metadata={"field": "organization_sirets"},
    )


@dataclass(frozen=True)
class MemberOrganization:
    organization_id: uuid.UUID
    siret: str
    name: str


def normalise_sirets(sirets: Sequence[str], field: str = "organization_sirets") -> list[str]:
    """Valid SIRETs (14 digits, Luhn), deduplicated and sorted: what a grant binds to."""
    if not sirets:
        raise Failure(
            "INVALID_ARGUMENT",
            "INVALID_FIELD",
            "give at least one SIRET",
            metadata={"field": field},
        )
    if len(sirets) > 1000:
        raise Failure(
            "INVALID_ARGUMENT", "INVALID_FIELD", "at most 1000 SIRETs", metadata={"field": field}
        )
    return sorted({validation.siret(siret, field) for siret in sirets})


async def _organizations(db: AsyncSession, sirets: list[str]) -> list[Organization]:
    found = list(await db.scalars(select(Organization).where(Organization.siret.in_(sirets))))
    missing = sorted(set(sirets) - {o.siret for o in found})
    if missing:
        raise unknown_organizations(missing)
    return found


async def is_relay(db: AsyncSession, organization_id: uuid.UUID) -> bool:
    return (
        await db.scalar(
            select(Relay.organization_id).where(Relay.organization_id == organization_id)
        )
        is not None
    )


# ---- membership ---------------------------------------------------------------------------------


async def add_members(
    app: App,
    db: AsyncSession,
    relay: Organization,
    sirets: list[str],
    *,
    actor: uuid.UUID | None,
    designate: bool,
) -> list[MemberOrganization]:
    """Add members to the relay (designating it first when `designate`: the operator's path)."""
    now = app.clock.now()
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    if designate:
        await db.execute(
            insert(Relay)
            .values(organization_id=relay.id, designated_at=now)
            .on_conflict_do_nothing()
        )
    elif not await is_relay(db, relay.id):
        raise not_a_relay()
    members = await _organizations(db, sirets)
    if any(member.id == relay.id for member in members):
        raise Failure(
            "INVALID_ARGUMENT",
            "INVALID_FIELD",
            "a relay is not its own member",
            metadata={"field": "organization_sirets"},
        )
    for member in members:
        added = await db.execute(
            insert(RelayMember)
            .values(relay_id=relay.id, member_id=member.id, added_at=now)
            .on_conflict_do_nothing()
        )
        if added.rowcount:  # type: ignore[attr-defined]
            _membership_event(app, db, "relay.member_added", relay, member, actor)
    return [MemberOrganization(m.id, m.siret, m.name) for m in members]


async def remove_members(
    app: App,
    db: AsyncSession,
    relay: Organization,
    sirets: list[str],
    *,
    actor: uuid.UUID | None,
) -> list[MemberOrganization]:
    if not await is_relay(db, relay.id):
        raise not_a_relay()
    members = await _organizations(db, sirets)
    removed: list[MemberOrganization] = []
    for member in members:
        gone = await db.execute(
            delete(RelayMember).where(
                RelayMember.relay_id == relay.id, RelayMember.member_id == member.id
            )
        )
        if gone.rowcount:  # type: ignore[attr-defined]
            _membership_event(app, db, "relay.member_removed", relay, member, actor)
            removed.append(MemberOrganization(member.id, member.siret, member.name))
    return removed


def _membership_event(
    app: App,
    db: AsyncSession,
    event: str,
    relay: Organization,
    member: Organization,
    actor: uuid.UUID | None,
) -> None:
    # In both trails: the member's administrators see which relay reads their counts.
    audit.record(db, app.clock, event, organization_id=relay.id, actor=actor, member=member.siret)
    audit.record(db, app.clock, event, organization_id=member.id, relay=relay.siret)


async def members_of(db: AsyncSession, relay_id: uuid.UUID) -> list[MemberOrganization]:
    rows = await db.execute(
        select(Organization.id, Organization.siret, Organization.name)
        .join(RelayMember, RelayMember.member_id == Organization.id)
        .where(RelayMember.relay_id == relay_id)
        .order_by(Organization.siret)
    )
    return [MemberOrganization(*row) for row in rows.all()]


async def organization_by_siret(app: App, siret: str) -> Organization:
    siret = validation.siret(siret, "siret")
    async with app.read() as db:
        found = await db.scalar(select(Organization).where(Organization.siret == siret))
    if found is None:
        raise unknown_organizations([siret])
    return found


# ---- over the API (the relay's own accounts) ----------------------------------------------------


async def _caller_relay(db: AsyncSession, caller: SessionInfo) -> Organization:
    relay = await db.scalar(select(Organization).where(Organization.id == caller.organization_id))
    assert relay is not None
    if not await is_relay(db, relay.id):
        raise not_a_relay()
    return relay


async def change_members(
    app: App,
    caller: SessionInfo,
    *,
    action: Action,
    grant_token: str,
    sirets: Sequence[str],
) -> list[MemberOrganization]:
    """AddRelayMembers / RemoveRelayMembers: an administrator of the relay, with a grant bound
    to these SIRETs; the grant is spent in the transaction of the change (not on a refusal)."""
    require_admin(caller.role)
    wanted = normalise_sirets(sirets)
    values = grants.ActionValues(organization_sirets=tuple(wanted))
    async with app.write() as db:
        relay = await _caller_relay(db, caller)
        await _organizations(db, wanted)  # an unknown SIRET refuses before the grant is spent
        await grants.redeem(
            app, db, caller, token=grant_token, action=action, target=None, values=values
        )
        if action is Action.ADD_RELAY_MEMBERS:
            return await add_members(
                app, db, relay, wanted, actor=caller.account_id, designate=False
            )
        return await remove_members(app, db, relay, wanted, actor=caller.account_id)


async def list_members(app: App, caller: SessionInfo) -> list[MemberOrganization]:
    async with app.write() as db:
        relay = await _caller_relay(db, caller)
        members = await members_of(db, relay.id)
        audit.record(
            db,
            app.clock,
            "relay.members_read",
            organization_id=relay.id,
            actor=caller.account_id,
            members=str(len(members)),
        )
    return members


# ---- the relay's view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignProgress:
    campaign_id: uuid.UUID | None
    running: bool
    recipients: int
    became_ready: int
    emails_sent: int


@dataclass(frozen=True)
class MemberView:
    organization: MemberOrganization
    readiness: directory.Readiness  # counts only: `issues` stays empty in a relay's view
    administrators: list[directory.AdministratorView]
    campaign: CampaignProgress
    trend: list[progress.Day]

    @property
    def without_ready_administrator(self) -> bool:
        """No active administrator who can receive a code: nobody there can fix anything."""
        return self.readiness.ready_administrators == 0


def ordering(view: MemberView) -> tuple[bool, float, str]:
    """Who needs the relay first: no ready administrator, then the lowest share ready."""
    total = view.readiness.accounts_total
    share = view.readiness.ready / total if total else 1.0
    return (not view.without_ready_administrator, share, view.organization.siret)


async def member_view(app: App, member: MemberOrganization) -> MemberView:
    report = directory.readiness_counts(await directory.readiness(app, member.organization_id))
    _, admins = await directory.administrators_of(app, member.organization_id)
    return MemberView(
        organization=member,
        readiness=report,
        administrators=admins,
        campaign=await campaign_progress(app, member.organization_id),
        trend=await progress.trend(app, member.organization_id),
    )


async def campaign_progress(app: App, organization_id: uuid.UUID) -> CampaignProgress:
    """The organisation's latest campaign (its own or a relay's): recipients, ready, emails."""
    async with app.read() as db:
        latest = await db.scalar(
            select(Campaign)
            .join(CampaignRecipient, CampaignRecipient.campaign_id == Campaign.id)
            .where(CampaignRecipient.organization_id == organization_id)
            .order_by(Campaign.started_at.desc())
            .limit(1)
        )
        if latest is None:
            return CampaignProgress(None, False, 0, 0, 0)
        row = (
            await db.execute(
                select(
                    func.count(),
                    func.count().filter(CampaignRecipient.status == RecipientStatus.READY),
                    func.coalesce(func.sum(CampaignRecipient.sends), 0),
                ).where(
                    CampaignRecipient.campaign_id == latest.id,
                    CampaignRecipient.organization_id == organization_id,
                )
            )
        ).one()
    return CampaignProgress(
        latest.id, latest.status == CampaignStatus.RUNNING, int(row[0]), int(row[1]), int(row[2])
    )


async def overview_of(app: App, relay_id: uuid.UUID) -> list[MemberView]:
    """Every member's view, those without a ready administrator first."""
    async with app.read() as db:
        members = await members_of(db, relay_id)
    views = [await member_view(app, member) for member in members]
    return sorted(views, key=ordering)


async def overview(app: App, caller: SessionInfo) -> tuple[Organization, list[MemberView]]:
    """GetRelayOverview: any signed-in account of the relay (its staff); audited."""
    async with app.read() as db:
        relay = await _caller_relay(db, caller)
    views = await overview_of(app, relay.id)
    async with app.write() as db:
        audit.record(
            db,
            app.clock,
            "relay.overview_read",
            organization_id=relay.id,
            actor=caller.account_id,
            members=str(len(views)),
        )
    return relay, views

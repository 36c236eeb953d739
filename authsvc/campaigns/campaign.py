"""Readiness campaigns: one email per not-ready account per round, until it is ready.

`start` lists the accounts of the organisations concerned that are not ready (recipients, due at
once). `run_due` (the server runs it every `campaign_tick_s`, `authsvc campaign run` once) takes
the due recipients in batches; an account that became ready is marked so and never emailed
again; the others are paid from the send budgets (budget.py), claimed by a conditional UPDATE
(still waiting, still due: a recipient claimed by a concurrent worker is not claimed twice), and
their email is queued in the same transaction. The dispatcher asks `superseded` before sending a
campaign email, so that an account that became ready after its email was queued gets none.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

import structlog
from sqlalchemy import Table, bindparam, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.accounts.directory import account_issues, ready_clause
from authsvc.app import App
from authsvc.campaigns import budget, progress, relays
from authsvc.courier import templates
from authsvc.courier.outbox import enqueue
from authsvc.db import (
    Account,
    AccountStatus,
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Organization,
    RecipientStatus,
)
from authsvc.db.base import new_id
from authsvc.flows import grants
from authsvc.otp import random_token, token_digest
from authsvc.phones import mask_email
from authsvc.policies.permissions import Action, require_admin
from authsvc.sessions import SessionInfo

log = structlog.get_logger("authsvc.campaigns")

TEMPLATES = ("readiness_reminder", "readiness_activation")
PHONE_ISSUES = frozenset({"no_phone", "invalid_phone", "phone_unverified"})


@dataclass(frozen=True)
class Started:
    campaign_id: uuid.UUID
    recipients: int
    # Organisations left out: a running campaign already covers them (one email per round).
    already_covered: list[uuid.UUID]


async def covered(db: AsyncSession, organization_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these organisations a running campaign already covers."""
    rows = await db.scalars(
        select(CampaignRecipient.organization_id)
        .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
        .where(
            Campaign.status == CampaignStatus.RUNNING,
            CampaignRecipient.organization_id.in_(organization_ids),
        )
        .distinct()
    )
    return set(rows)


async def start(
    app: App,
    *,
    runner_id: uuid.UUID,
    organization_ids: list[uuid.UUID],
    started_by: uuid.UUID | None,
) -> Started:
    """Start a campaign run by `runner_id` (the organisation itself, or a relay) over these
    organisations; every account of theirs that is not ready (and not disabled) is due now."""
    async with app.write() as db:
        return await start_in(
            app, db, runner_id=runner_id, organization_ids=organization_ids, started_by=started_by
        )


async def start_in(
    app: App,
    db: AsyncSession,
    *,
    runner_id: uuid.UUID,
    organization_ids: list[uuid.UUID],
    started_by: uuid.UUID | None,
) -> Started:
    """`start`, in the caller's transaction (the API's, which redeems the grant in it)."""
    now = app.clock.now()
    campaign_id = new_id()
    taken = await covered(db, organization_ids)
    concerned = [org for org in organization_ids if org not in taken]
    db.add(
        Campaign(
            id=campaign_id,
            organization_id=runner_id,
            started_by=started_by,
            status=CampaignStatus.RUNNING,
            reminder_interval_s=app.settings.campaign_reminder_interval_s,
            started_at=now,
            ends_at=now + timedelta(seconds=app.settings.campaign_duration_s),
            ended_at=None,
        )
    )
    await db.flush()
    rows: list[dict[str, object]] = []
    for account in await db.scalars(
        select(Account).where(
            Account.organization_id.in_(concerned), Account.status != AccountStatus.DISABLED
        )
    ):
        if account_issues(account):
            rows.append(_recipient(campaign_id, account, now))
    if rows:
        await db.execute(insert(CampaignRecipient), rows)
    audit.record(
        db,
        app.clock,
        "campaign.started",
        organization_id=runner_id,
        actor=started_by,
        campaign_id=str(campaign_id),
        organizations=str(len(concerned)),
        recipients=str(len(rows)),
    )
    for org in concerned:
        if org != runner_id:  # the member's own trail says who emails its staff
            audit.record(
                db,
                app.clock,
                "campaign.started",
                organization_id=org,
                campaign_id=str(campaign_id),
                by_organization=str(runner_id),
            )
    await progress.record(app, db, concerned)
    return Started(campaign_id, len(rows), sorted(taken, key=str))


def _recipient(campaign_id: uuid.UUID, account: Account, now: datetime) -> dict[str, object]:
    return {
        "campaign_id": campaign_id,
        "account_id": account.id,
        "organization_id": account.organization_id,
        "status": RecipientStatus.WAITING,
        "sends": 0,
        "next_send_at": now,
        "last_sent_at": None,
        "last_message_id": None,
        "link_digest": None,
        "link_expires_at": None,
        "link_used_at": None,
        "ready_at": None,
    }


@dataclass
class Round:
    """What one `run_due` did."""

    sent: int = 0
    became_ready: int = 0
    # Recipients left due because a budget ran out: they go in a later tick.
    deferred_organizations: set[uuid.UUID] = field(default_factory=set)
    provider_limit_reached: bool = False
    ended_campaigns: int = 0


async def run_due(app: App) -> Round:
    """Queue the emails of every due recipient that the budgets allow; record today's progress."""
    now = app.clock.now()
    result = Round()
    async with app.write() as db:
        ended = await db.execute(
            update(Campaign)
            .where(Campaign.status == CampaignStatus.RUNNING, Campaign.ends_at <= now)
            .values(status=CampaignStatus.ENDED, ended_at=now)
        )
        result.ended_campaigns = int(ended.rowcount)  # type: ignore[attr-defined]
    while not result.provider_limit_reached:
        async with app.write() as db:
            due = await _due(app, db, now, exclude=result.deferred_organizations)
            if not due:
                break
            await _send_batch(app, db, due, now, result)
    async with app.write() as db:
        running = await db.scalars(
            select(CampaignRecipient.organization_id)
            .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
            .where(Campaign.status == CampaignStatus.RUNNING)
            .distinct()
        )
        await progress.record(app, db, list(running))
    if result.sent:
        app.outbox_ready.set()
    return result


_Due = tuple[CampaignRecipient, Account, Campaign, str]


async def _due(app: App, db: AsyncSession, now: datetime, *, exclude: set[uuid.UUID]) -> list[_Due]:
    query = (
        select(CampaignRecipient, Account, Campaign, Organization.name)
        .join(Account, Account.id == CampaignRecipient.account_id)
        .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
        .join(Organization, Organization.id == CampaignRecipient.organization_id)
        .where(
            Campaign.status == CampaignStatus.RUNNING,
            CampaignRecipient.status == RecipientStatus.WAITING,
            CampaignRecipient.next_send_at <= now,
        )
        .order_by(CampaignRecipient.next_send_at, CampaignRecipient.account_id)
        .limit(app.settings.campaign_batch)
    )
    if exclude:
        query = query.where(CampaignRecipient.organization_id.not_in(exclude))
    return [(r, a, c, name) for r, a, c, name in (await db.execute(query)).all()]


async def _send_batch(
    app: App, db: AsyncSession, due: list[_Due], now: datetime, result: Round
) -> None:
    settings = app.settings
    by_org: dict[uuid.UUID, list[_Due]] = defaultdict(list)
    for item in due:
        recipient, account, _, _ = item
        if account.status == AccountStatus.DISABLED:
            await _drop(db, recipient)  # nobody to remind: never due again, never "ready"
        elif not account_issues(account):
            result.became_ready += await _mark_ready(db, recipient, now)
        else:
            by_org[recipient.organization_id].append(item)
    for org, items in by_org.items():
        day = budget.day_window(now)
        allowed = await budget.claim(
            db,
            f"org:{org}",
            day,
            want=len(items),
            limit=settings.campaign_emails_per_organization_per_day,
        )
        paid = await budget.claim(
            db,
            "provider",
            budget.minute_window(now),
            want=allowed,
            limit=settings.campaign_emails_per_minute,
        )
        if paid < allowed:  # the provider's minute is full: give the organisation its share back
            await budget.release(db, f"org:{org}", day, allowed - paid)
            result.provider_limit_reached = True
        if paid < len(items):
            result.deferred_organizations.add(org)
        result.sent += await _send(app, db, items[:paid], now)
        if result.provider_limit_reached:
            return


async def _drop(db: AsyncSession, recipient: CampaignRecipient) -> None:
    await db.execute(
        update(CampaignRecipient)
        .where(
            CampaignRecipient.campaign_id == recipient.campaign_id,
            CampaignRecipient.account_id == recipient.account_id,
        )
        .values(next_send_at=None, link_digest=None)
        .execution_options(synchronize_session=False)
    )


async def _mark_ready(db: AsyncSession, recipient: CampaignRecipient, now: datetime) -> int:
    marked = await db.execute(
        update(CampaignRecipient)
        .where(
            CampaignRecipient.campaign_id == recipient.campaign_id,
            CampaignRecipient.account_id == recipient.account_id,
            CampaignRecipient.status == RecipientStatus.WAITING,
        )
        .values(status=RecipientStatus.READY, ready_at=now, next_send_at=None, link_digest=None)
        .execution_options(synchronize_session=False)
    )
    return int(marked.rowcount)  # type: ignore[attr-defined]


async def _send(app: App, db: AsyncSession, items: list[_Due], now: datetime) -> int:
    """Claim these recipients for this round (one conditional UPDATE: still waiting, still due;
    a recipient a concurrent worker claimed is not returned), then queue the winners' emails
    and record each one's message and link, in the caller's transaction."""
    if not items:
        return 0
    # Core statements on the table: the ORM's per-row bookkeeping would cost more than the SQL.
    table = cast(Table, CampaignRecipient.__table__)
    interval = timedelta(seconds=items[0][2].reminder_interval_s)
    keys = [(r.campaign_id, r.account_id) for r, _, _, _ in items]
    won = await db.execute(
        update(table)
        .where(
            tuple_(table.c.campaign_id, table.c.account_id).in_(keys),
            table.c.status == RecipientStatus.WAITING,
            table.c.next_send_at <= now,
        )
        .values(sends=table.c.sends + 1, last_sent_at=now, next_send_at=now + interval)
        .returning(table.c.campaign_id, table.c.account_id)
    )
    claimed = {tuple(row) for row in won.all()}
    ttl = timedelta(seconds=app.settings.campaign_link_ttl_s)
    links: list[dict[str, object]] = []
    for recipient, account, campaign, organization_name in items:
        if (recipient.campaign_id, recipient.account_id) not in claimed:
            continue  # a concurrent worker sent this round's email
        issues = account_issues(account)
        token = random_token(32) if PHONE_ISSUES & set(issues) else None
        message_id = new_id()
        message = templates.readiness_email(
            display_name=account.display_name,
            organization_name=organization_name,
            issues=issues,
            service=app.settings.service_name,
            link_url=app.settings.campaign_link_url,
            link_token=token,
        )
        enqueue(
            app,
            db,
            channel="email",
            template=TEMPLATES[0] if token else TEMPLATES[1],
            to=account.email,
            masked_to=mask_email(account.email),
            message=message,
            flow_id=None,
            message_id=message_id,
        )
        # Each email replaces the previous link: only the latest one opens anything.
        links.append(
            {
                "b_campaign": recipient.campaign_id,
                "b_account": recipient.account_id,
                "b_message": message_id,
                "b_digest": token_digest(token) if token else None,
                "b_expires": min(now + ttl, campaign.ends_at) if token else None,
            }
        )
    if links:
        await db.execute(
            update(table)
            .where(
                table.c.campaign_id == bindparam("b_campaign"),
                table.c.account_id == bindparam("b_account"),
            )
            .values(
                last_message_id=bindparam("b_message"),
                link_digest=bindparam("b_digest"),
                link_expires_at=bindparam("b_expires"),
                link_used_at=None,
            ),
            links,
        )
    return len(links)


async def superseded(app: App, message_id: uuid.UUID) -> bool:
    """For the dispatcher, before it sends a campaign email: True when its account became ready
    (or its campaign ended) since the email was queued; the recipient is then marked ready."""
    now = app.clock.now()
    async with app.write() as db:
        row = (
            await db.execute(
                select(CampaignRecipient, Campaign.status, ready_clause())
                .join(Account, Account.id == CampaignRecipient.account_id)
                .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
                .where(CampaignRecipient.last_message_id == message_id)
            )
        ).first()
        if row is None:
            return False
        recipient, status, ready = row
        if ready:
            await _mark_ready(db, recipient, now)
        return bool(ready) or status != CampaignStatus.RUNNING


async def stop(app: App, campaign_id: uuid.UUID, *, actor: uuid.UUID | None) -> bool:
    """End a campaign now: no email is queued for it any more."""
    now = app.clock.now()
    async with app.write() as db:
        done = await db.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.RUNNING)
            .values(status=CampaignStatus.ENDED, ended_at=now)
            .returning(Campaign.organization_id)
        )
        runner = done.scalar_one_or_none()
        if runner is None:
            return False
        audit.record(
            db,
            app.clock,
            "campaign.ended",
            organization_id=runner,
            actor=actor,
            campaign_id=str(campaign_id),
        )
    return True


async def start_for(
    app: App, caller: SessionInfo, *, grant_token: str, sirets: Sequence[str]
) -> Started:
    """StartReadinessCampaign: an administrator, for their organisation (no SIRET) or, in a
    relay, for these members; the grant (bound to the SIRETs) is spent with the start."""
    require_admin(caller.role)
    wanted = relays.normalise_sirets(sirets) if sirets else []
    values = grants.ActionValues(organization_sirets=tuple(wanted))
    async with app.write() as db:
        if wanted:
            if not await relays.is_relay(db, caller.organization_id):
                raise relays.not_a_relay()
            members = {m.siret: m for m in await relays.members_of(db, caller.organization_id)}
            outside = [siret for siret in wanted if siret not in members]
            if outside:  # not a member: the same answer as no such organisation
                raise relays.unknown_organizations(outside)
            targets = [members[siret].organization_id for siret in wanted]
        else:
            targets = [caller.organization_id]
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=Action.START_READINESS_CAMPAIGN,
            target=None,
            values=values,
        )
        started = await start_in(
            app,
            db,
            runner_id=caller.organization_id,
            organization_ids=targets,
            started_by=caller.account_id,
        )
    return started


async def run_forever(app: App, stop: asyncio.Event) -> None:
    """Run the due rounds every `campaign_tick_s` until `stop` is set (beside the dispatcher:
    every replica may run it, the claims make concurrent rounds send each email once)."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), app.settings.campaign_tick_s)
            return
        except TimeoutError:
            pass
        try:
            done = await run_due(app)
        except Exception:  # a database hiccup: the next tick tries again
            log.exception("campaign_round_error")
            continue
        if done.sent or done.became_ready:
            log.info(
                "campaign_round",
                sent=done.sent,
                became_ready=done.became_ready,
                deferred_organizations=len(done.deferred_organizations),
                provider_limit_reached=done.provider_limit_reached,
            )

"""Campaign rounds on SQLite and PostgreSQL, driven by the test's clock.

10,000 imported accounts, a third not ready: every round emails each not-ready account exactly
once and no ready one, in ticks that never exceed the provider's minute nor an organisation's
day; reminders stop for an account the moment it is ready, even for an email already queued.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update

from authsvc.app import App
from authsvc.campaigns import campaign, link
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.outbox import Payload
from authsvc.db import (
    Account,
    AccountStatus,
    CampaignRecipient,
    MessageStatus,
    Organization,
    OutboxMessage,
    RecipientStatus,
    Role,
)
from authsvc.errors import Failure
from authsvc.flows.login import ClientInfo

CLIENT = ClientInfo(ip_address="203.0.113.9", user_agent="pytest")
ISSUES = ("no_phone", "invalid_phone", "phone_unverified", "pending_activation")


@pytest.fixture
async def app(settings: Settings, clock: FrozenClock) -> AsyncIterator[App]:
    app = App.build(settings, clock)
    yield app
    await app.close()


def luhn_siret(index: int) -> str:
    """A valid SIRET for organisation `index` (the 14th digit makes the Luhn sum right)."""
    body = f"2180{index:09d}"
    for last in "0123456789":
        digits = [int(c) for c in body + last]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2)
            for i, d in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return body + last
    raise AssertionError("unreachable")


async def import_accounts(
    app: App, *, organizations: int, per_organization: int, not_ready_every: int = 3
) -> tuple[list[uuid.UUID], set[str], set[str]]:
    """Organisations and accounts written in bulk (what `import-accounts` leaves, 10,000 times
    faster); every `not_ready_every`-th account lacks something. Returns the organisations and
    the emails of the not-ready and ready accounts."""
    now = app.clock.now()
    org_ids = [uuid.uuid4() for _ in range(organizations)]
    accounts: list[dict[str, object]] = []
    not_ready: set[str] = set()
    ready: set[str] = set()
    for o, org_id in enumerate(org_ids):
        for a in range(per_organization):
            email = f"agent{a}@org{o}.example"
            issue = ISSUES[(a // not_ready_every) % 4] if a % not_ready_every == 0 else None
            (not_ready if issue else ready).add(email)
            accounts.append(
                {
                    "id": uuid.uuid4(),
                    "organization_id": org_id,
                    "login": f"agent{a}",
                    "display_name": f"Agent {a}",
                    "email": email,
                    "phone_sealed": None if issue in ("no_phone", "invalid_phone") else b"x",
                    "phone_digest": None,
                    "phone_masked": "+33 •••••••12" if issue != "no_phone" else None,
                    "phone_kind": None if issue in ("no_phone", "invalid_phone") else "mobile",
                    "phone_region": "FR",
                    "phone_verified_at": (
                        None if issue in ("no_phone", "invalid_phone", "phone_unverified") else now
                    ),
                    "role": Role.ADMIN if a == 1 else Role.MEMBER,
                    "status": (
                        AccountStatus.PENDING_ACTIVATION
                        if issue == "pending_activation"
                        else AccountStatus.ACTIVE
                    ),
                    "password_hash": None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
    async with app.write() as db:
        await db.execute(
            insert(Organization),
            [
                {"id": org, "siret": luhn_siret(i), "name": f"Commune {i}", "created_at": now}
                for i, org in enumerate(org_ids)
            ],
        )
        await db.execute(insert(Account), accounts)
    return org_ids, not_ready, ready


async def campaign_emails(app: App, since: int = 0) -> list[str]:
    """The addresses of the campaign emails queued, oldest first, from the `since`-th on."""
    async with app.read() as db:
        rows = await db.execute(
            select(OutboxMessage.id, OutboxMessage.payload_sealed)
            .where(OutboxMessage.template.in_(campaign.TEMPLATES))
            .order_by(OutboxMessage.created_at, OutboxMessage.id)
        )
        sealed = rows.all()
    return [
        Payload.loads(app.keys.sealer.open(payload, message_id.bytes)).to
        for message_id, payload in sealed[since:]
        if payload is not None
    ]


async def run_round(app: App, clock: FrozenClock) -> list[int]:
    """Ticks a minute apart until nothing is due; the emails each tick queued."""
    per_tick: list[int] = []
    while True:
        done = await campaign.run_due(app)
        per_tick.append(done.sent)
        if not done.provider_limit_reached and not done.deferred_organizations:
            return per_tick
        clock.advance(60)


@pytest.mark.slow
async def test_ten_thousand_accounts_one_email_per_not_ready_account_per_round(
    app: App, clock: FrozenClock
) -> None:
    org_ids, not_ready, ready = await import_accounts(app, organizations=10, per_organization=1000)
    assert (len(not_ready), len(ready)) == (3340, 6660)
    runner = org_ids[0]
    started = await campaign.start(app, runner_id=runner, organization_ids=org_ids, started_by=None)
    assert started.recipients == len(not_ready)

    per_tick = await run_round(app, clock)
    limit = app.settings.campaign_emails_per_minute
    assert sum(per_tick) == len(not_ready) and max(per_tick) <= limit
    assert len(per_tick) == -(-len(not_ready) // limit)  # as few ticks as the limit allows
    first = await campaign_emails(app)
    assert Counter(first) == Counter({email: 1 for email in not_ready})  # once each, none ready

    # 1,000 of them get ready before the reminder; the others get exactly one more email.
    fixed = sorted(not_ready)[:1000]
    async with app.write() as db:
        await db.execute(
            update(Account)
            .where(Account.email.in_(fixed))
            .values(
                phone_kind="mobile",
                phone_verified_at=clock.now(),
                status=AccountStatus.ACTIVE,
            )
        )
    assert sum(await run_round(app, clock)) == 0  # nothing due before the interval
    clock.advance(app.settings.campaign_reminder_interval_s)
    await run_round(app, clock)
    second = await campaign_emails(app, since=len(first))
    assert Counter(second) == Counter({email: 1 for email in not_ready - set(fixed)})
    async with app.read() as db:
        marked = await db.scalar(
            select(func.count()).where(CampaignRecipient.status == RecipientStatus.READY)
        )
    assert marked == 1000


async def test_budgets_per_organization_and_provider_minute(
    app: App, clock: FrozenClock, settings: Settings
) -> None:
    app.settings = settings.model_copy(
        update={"campaign_emails_per_organization_per_day": 3, "campaign_emails_per_minute": 5}
    )
    org_ids, not_ready, _ = await import_accounts(
        app, organizations=2, per_organization=8, not_ready_every=2
    )
    assert len(not_ready) == 8  # 4 per organisation
    await campaign.start(app, runner_id=org_ids[0], organization_ids=org_ids, started_by=None)
    totals: list[int] = []
    for _ in range(3):  # three minutes of the same day
        totals.append((await campaign.run_due(app)).sent)
        clock.advance(60)
    assert totals == [5, 1, 0]  # the provider's 5 a minute, then each organisation's 3 a day
    per_org = Counter(email.split("@")[1] for email in await campaign_emails(app))
    assert per_org == Counter({"org0.example": 3, "org1.example": 3})
    clock.advance(86400)  # the next day: the last one of each
    assert (await campaign.run_due(app)).sent == 2
    assert len(await campaign_emails(app)) == 8


async def test_concurrent_rounds_send_each_email_once(app: App, clock: FrozenClock) -> None:
    org_ids, not_ready, _ = await import_accounts(app, organizations=4, per_organization=150)
    await campaign.start(app, runner_id=org_ids[0], organization_ids=org_ids, started_by=None)
    rounds = await asyncio.gather(*(campaign.run_due(app) for _ in range(4)))
    assert sum(r.sent for r in rounds) == len(not_ready)
    assert Counter(await campaign_emails(app)) == Counter({email: 1 for email in not_ready})


async def test_a_queued_reminder_is_dropped_once_its_account_is_ready(
    app: App, clock: FrozenClock, settings: Settings
) -> None:
    org_ids, not_ready, _ = await import_accounts(
        app, organizations=1, per_organization=6, not_ready_every=3
    )
    await campaign.start(app, runner_id=org_ids[0], organization_ids=org_ids, started_by=None)
    assert (await campaign.run_due(app)).sent == len(not_ready) == 2
    fixed = sorted(not_ready)[0]
    async with app.write() as db:
        await db.execute(
            update(Account)
            .where(Account.email == fixed)
            .values(phone_kind="mobile", phone_verified_at=clock.now(), status="active")
        )
    dispatcher = Dispatcher(app)
    try:
        assert await dispatcher.run_once() == 2
    finally:
        await dispatcher.close()
    async with app.read() as db:
        statuses = Counter(
            await db.scalars(
                select(OutboxMessage.status).where(OutboxMessage.template.in_(campaign.TEMPLATES))
            )
        )
        recipient = await db.scalar(
            select(CampaignRecipient.status)
            .join(Account, Account.id == CampaignRecipient.account_id)
            .where(Account.email == fixed)
        )
    assert statuses == Counter({MessageStatus.SENT: 1, MessageStatus.ABANDONED: 1})
    assert recipient == RecipientStatus.READY
    delivered = settings.outbox_file.read_text()
    assert fixed not in delivered and (not_ready - {fixed}).pop() in delivered


async def _token_of(app: App, email: str) -> str:
    import re

    async with app.read() as db:
        rows = (
            await db.execute(
                select(OutboxMessage.id, OutboxMessage.payload_sealed)
                .where(OutboxMessage.template == "readiness_reminder")
                .order_by(OutboxMessage.created_at)
            )
        ).all()
    for message_id, sealed in reversed(rows):
        assert sealed is not None  # not delivered: nothing dispatches in this test
        payload = Payload.loads(app.keys.sealer.open(sealed, message_id.bytes))
        if payload.to == email:
            match = re.search(r"jeton=([A-Za-z0-9_-]+)", payload.text)
            assert match and match.group(1) not in (await _summaries(app))
            return match.group(1)
    raise AssertionError(f"no reminder to {email}")


async def _summaries(app: App) -> str:
    async with app.read() as db:
        return "\n".join(s or "" for s in await db.scalars(select(OutboxMessage.summary)))


async def test_links_are_single_use_replaced_by_the_next_email_and_expire(
    app: App, clock: FrozenClock
) -> None:
    org_ids, _, _ = await import_accounts(
        app, organizations=1, per_organization=4, not_ready_every=4
    )
    # agent0 (no phone) is the one not ready.
    await campaign.start(app, runner_id=org_ids[0], organization_ids=org_ids, started_by=None)
    await campaign.run_due(app)
    first = await _token_of(app, "agent0@org0.example")
    clock.advance(app.settings.campaign_reminder_interval_s)
    await campaign.run_due(app)
    second = await _token_of(app, "agent0@org0.example")
    assert first != second

    async def refused(token: str) -> str:
        with pytest.raises(Failure) as failure:
            await link.open_link(app, token=token, phone="+33611112222", client=CLIENT)
        return failure.value.reason

    assert await refused(first) == "LINK_INVALID"  # replaced by the reminder
    with pytest.raises(Failure) as bad_phone:  # a bad phone spends nothing
        await link.open_link(app, token=second, phone="12", client=CLIENT)
    assert bad_phone.value.reason != "LINK_INVALID"
    view = await link.open_link(app, token=second, phone="+33611112222", client=CLIENT)
    assert view.masked_destination.endswith("22")
    assert await refused(second) == "LINK_INVALID"  # single use
    clock.advance(app.settings.campaign_reminder_interval_s)
    await campaign.run_due(app)
    third = await _token_of(app, "agent0@org0.example")
    clock.advance(app.settings.campaign_link_ttl_s)
    assert await refused(third) == "LINK_INVALID"  # expired
    async with app.read() as db:
        account = await db.scalar(select(Account).where(Account.email == "agent0@org0.example"))
    assert account is not None and account.phone_kind is None  # no link changed the account


async def test_a_campaign_ends_and_an_organisation_is_covered_once(
    app: App, clock: FrozenClock
) -> None:
    org_ids, not_ready, _ = await import_accounts(app, organizations=2, per_organization=6)
    one = await campaign.start(
        app, runner_id=org_ids[0], organization_ids=[org_ids[0]], started_by=None
    )
    other = await campaign.start(
        app, runner_id=org_ids[1], organization_ids=org_ids, started_by=None
    )
    assert other.already_covered == [org_ids[0]] and other.recipients == one.recipients == 2
    await campaign.run_due(app)
    assert Counter(await campaign_emails(app)) == Counter({email: 1 for email in not_ready})
    clock.advance(app.settings.campaign_duration_s + 1)
    ended = await campaign.run_due(app)
    assert (ended.ended_campaigns, ended.sent) == (2, 0)
    assert timedelta(seconds=app.settings.campaign_duration_s) > timedelta(0)


async def test_a_disabled_account_is_not_reminded_nor_counted_ready(
    app: App, clock: FrozenClock
) -> None:
    org_ids, not_ready, _ = await import_accounts(
        app, organizations=1, per_organization=6, not_ready_every=3
    )
    await campaign.start(app, runner_id=org_ids[0], organization_ids=org_ids, started_by=None)
    gone = sorted(not_ready)[0]
    async with app.write() as db:
        await db.execute(
            update(Account).where(Account.email == gone).values(status=AccountStatus.DISABLED)
        )
    done = await campaign.run_due(app)
    assert (done.sent, done.became_ready) == (len(not_ready) - 1, 0)
    assert gone not in await campaign_emails(app)
    clock.advance(app.settings.campaign_reminder_interval_s)
    assert (await campaign.run_due(app)).sent == len(not_ready) - 1

"""The audit webhook sink against a real aiohttp HTTP server, on SQLite and PostgreSQL.

The receiver checks every signature itself (HMAC-SHA-256 of "timestamp." + body, compared in
constant time), fails the first posts (a stall past the client's timeout, then 503s) and then
accepts. Checked: every event arrives, in feed order per organisation, none lost, none twice;
the cursor's lease (a taken-over dispatcher cannot move the cursor); two dispatchers side by
side on PostgreSQL never post one organisation's events at the same time nor twice; `authsvc
dispatch` runs the sink; bad settings are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError
from sqlalchemy import Connection, insert, select
from support import CLIENT, OTHER_SIRET, PASSWORD, START, Inbox, Seeded, failure_of, seed_account
from support import sign_in as full_sign_in

from authsvc import audit, metrics
from authsvc.accounts import create_organization
from authsvc.app import App
from authsvc.clock import Clock, FrozenClock
from authsvc.config import Settings
from authsvc.courier.audit_webhook import SINK, AuditWebhook
from authsvc.db import AuditEvent
from authsvc.db.statements import audit_feed, table
from authsvc.db.statements.audit_feed import Position
from authsvc.seeding import org_siret
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub

SECRET = "audit-webhook-test-secret-0123456789abcdef"
AUDIT = table(AuditEvent)


class Receiver:
    """A SIEM's HTTP intake: verifies, then fails `fail_first` posts (the first `stall_first`
    of them by answering too late), then accepts; records what it accepted per organisation."""

    def __init__(self, *, fail_first: int = 0, stall_first: int = 0, hold_s: float = 0) -> None:
        self.fail_first, self.stall_first, self.hold_s = fail_first, stall_first, hold_s
        self.posts = 0
        self.bad_signatures = 0
        self.accepted: dict[str | None, list[int]] = defaultdict(list)
        self.in_flight: dict[str | None, int] = defaultdict(int)
        self.overlaps = 0  # posts of one organisation while another of its posts was in flight
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Authsvc-Timestamp", "")
        signature = request.headers.get("X-Authsvc-Signature", "")
        signed = timestamp.encode() + b"." + body
        expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        if not timestamp.isdigit() or not hmac.compare_digest(expected, signature):
            self.bad_signatures += 1
            return web.Response(status=401)
        document = json.loads(body)
        organization = document["organization_id"]
        self.posts += 1
        number = self.posts
        self.in_flight[organization] += 1
        if self.in_flight[organization] > 1:
            self.overlaps += 1
        try:
            if number <= self.stall_first:
                await asyncio.sleep(1.0)  # beyond the client's timeout
            elif self.hold_s:
                await asyncio.sleep(self.hold_s)
            if number <= self.fail_first:
                return web.Response(status=503)
            self.accepted[organization] += [event["id"] for event in document["events"]]
            return web.Response(status=204)
        finally:
            self.in_flight[organization] -= 1


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    application = web.Application()
    application.router.add_post("/audit", receiver.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/audit"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def webhook_settings(settings: Settings, receiver: Receiver, **more: Any) -> Settings:
    return settings.model_copy(
        update={
            "audit_webhook_url": receiver.url,
            "audit_webhook_secret": SecretStr(SECRET),
            "audit_webhook_batch": 2,
            "audit_webhook_timeout_s": 0.3,
            **more,
        }
    )


def _per_organisation(connection: Connection) -> dict[str | None, list[int]]:
    rows = connection.execute(
        select(AUDIT.c.sequence, AUDIT.c.organization_id).order_by(AUDIT.c.txid, AUDIT.c.sequence)
    )
    events: dict[str | None, list[int]] = defaultdict(list)
    for row in rows:
        events[str(row.organization_id) if row.organization_id else None].append(row.sequence)
    return dict(events)


async def wrong_password(stub: AuthServiceAsyncStub, who: Seeded) -> None:
    await failure_of(
        stub.Login(
            pb.LoginRequest(
                organization_siret=who.organization_siret,
                login=who.login,
                password=pb.PasswordCredential(password=PASSWORD + "!"),
                client=CLIENT,
            )
        )
    )


async def test_every_event_arrives_in_order_after_failures(
    server: Server,
    stub: AuthServiceAsyncStub,
    inbox: Inbox,
    alice: Seeded,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bob = await seed_account(server, login="bob", siret=OTHER_SIRET)
    await wrong_password(stub, alice)
    session = (await full_sign_in(stub, inbox, alice)).session.token
    await wrong_password(stub, bob)
    await wrong_password(stub, bob)
    await stub.Logout(pb.LogoutRequest(session_token=session, client=CLIENT))
    await server.app.db.write(_insert_events, [None], 1)  # an event of no organisation
    expected = await server.app.db.read(_per_organisation)
    assert len(expected) == 3 and None in expected  # two organisations and "none"

    monkeypatch.setattr(metrics.state, "on", True)

    def counted(result: str) -> float:
        labels = {"result": result}
        return REGISTRY.get_sample_value("authsvc_audit_webhook_batches_total", labels) or 0.0

    before = {result: counted(result) for result in metrics.AUDIT_WEBHOOK_RESULTS}
    # One post stalls past the timeout, two get 503, then the receiver accepts.
    async with serving(Receiver(fail_first=3, stall_first=1)) as receiver:
        clock = FrozenClock(START)
        app = App.build(webhook_settings(settings, receiver), clock=clock)
        hook = AuditWebhook(app)
        try:
            assert await hook.open_cursors() == 3  # both organisations and "none"
            assert await hook.open_cursors() == 0
            rounds = 0
            # Bounded by rounds, not time. On PostgreSQL a round may find nothing settled yet
            # (the cluster's oldest write transaction, see audit_feed.py): it waits a little.
            while dict(receiver.accepted) != expected and rounds < 400:
                if not await hook.run_once():
                    await asyncio.sleep(0.05)
                clock.advance(app.settings.audit_webhook_max_backoff_s)  # past every backoff
                rounds += 1
        finally:
            await hook.close()
            await app.close()
    assert dict(receiver.accepted) == expected  # all, in feed order, none twice
    assert receiver.bad_signatures == 0
    batches = sum(-(-len(ids) // 2) for ids in expected.values())  # batches of 2
    assert receiver.posts == 3 + batches
    after = {result: counted(result) - before[result] for result in before}
    assert after == {"delivered": batches, "rejected": 2, "unreachable": 1, "superseded": 0}


async def due_once_settled(app: App, at: datetime) -> list[uuid.UUID]:
    """`due`, asked again while PostgreSQL's oldest write transaction (in any database of the
    cluster) still holds the new events back; bounded by attempts."""
    for _ in range(200):
        found = await app.db.read(audit_feed.due, SINK, at, 10)
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


async def test_a_dispatcher_whose_lease_was_taken_over_cannot_move_the_cursor(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded
) -> None:
    await wrong_password(stub, alice)
    app = server.app
    await app.db.write(audit_feed.open_cursors, SINK)
    (organization,) = await due_once_settled(app, app.clock.now())
    (event,) = await app.db.read(
        audit_feed.read, audit_feed.START, 10, organization, of_organization=True
    )
    target = Position(event.txid, event.sequence)
    lease_s = timedelta(seconds=30)

    now = app.clock.now()
    first = await app.db.statement(
        audit_feed.take_lease, SINK, organization, "A", now, now + lease_s
    )
    assert first is not None and first.position == audit_feed.START
    assert (
        await app.db.statement(audit_feed.take_lease, SINK, organization, "B", now, now + lease_s)
        is None
    )
    assert await app.db.read(audit_feed.due, SINK, now, 10) == []  # leased: not due

    later = now + timedelta(seconds=31)  # A stalled past its lease
    second = await app.db.statement(
        audit_feed.take_lease, SINK, organization, "B", later, later + lease_s
    )
    assert second is not None
    assert not await app.db.statement(audit_feed.advance, SINK, first, target)
    assert not await app.db.statement(audit_feed.failed, SINK, first, later, "late")
    assert not await app.db.statement(audit_feed.release, SINK, first)
    assert await app.db.statement(audit_feed.advance, SINK, second, target)
    assert not await app.db.statement(audit_feed.advance, SINK, second, target)  # released
    assert await app.db.read(audit_feed.due, SINK, later, 10) == []  # nothing beyond it

    # A failure backs the organisation off: not due before its time, the cursor unmoved.
    await wrong_password(stub, alice)
    third = await app.db.statement(
        audit_feed.take_lease, SINK, organization, "C", later, later + lease_s
    )
    assert third is not None and third.position == target
    retry_at = later + timedelta(seconds=8)
    assert await app.db.statement(audit_feed.failed, SINK, third, retry_at, "HTTP 503")
    assert await app.db.read(audit_feed.due, SINK, later, 10) == []
    assert await due_once_settled(app, retry_at) == [organization]
    fourth = await app.db.statement(
        audit_feed.take_lease, SINK, organization, "C", retry_at, retry_at + lease_s
    )
    assert fourth is not None and fourth.position == target and fourth.failures == 1


def _insert_events(
    connection: Connection, organizations: list[uuid.UUID | None], each: int
) -> None:
    clock = Clock()
    rows = [
        audit.event(clock, "test.event", organization_id=organization, n=str(index))
        for index in range(each)
        for organization in organizations
    ]
    connection.execute(insert(AUDIT), rows)


@pytest.mark.postgres
async def test_two_dispatchers_never_send_one_organisations_events_twice_or_at_once(
    server: Server, settings: Settings
) -> None:
    if server.app.db.dialect != "postgresql":
        pytest.skip("the race of two dispatchers is PostgreSQL's (SQLite has one writer)")
    app = server.app
    organizations: list[uuid.UUID | None] = []
    async with app.write() as db:
        for index in range(8):
            organization = await create_organization(
                app, db, siret=org_siret(index), name=f"O{index}"
            )
            organizations.append(organization.id)
    for _ in range(3):  # in several transactions: several txids
        await app.db.write(_insert_events, organizations, 5)
    expected = await app.db.read(_per_organisation)

    async with serving(Receiver(hold_s=0.01)) as receiver:
        configured = webhook_settings(settings, receiver, audit_webhook_concurrency=2)
        apps = [App.build(configured), App.build(configured)]  # two processes' engines
        hooks = [AuditWebhook(each) for each in apps]
        delivered = [0, 0]

        async def worker(index: int) -> None:
            hook = hooks[index]
            for _ in range(2000):
                if dict(receiver.accepted) == expected:
                    return
                await hook.open_cursors()
                done = await hook.run_once()
                delivered[index] += done
                if not done:
                    await asyncio.sleep(0.01)

        try:
            await asyncio.gather(worker(0), worker(1))
        finally:
            for hook, each in zip(hooks, apps, strict=True):
                await hook.close()
                await each.close()
    assert dict(receiver.accepted) == expected  # all, in order, none twice
    assert receiver.overlaps == 0
    assert min(delivered) > 0, delivered  # both took part: the leases were really contended
    assert sum(delivered) == receiver.posts


async def test_authsvc_dispatch_runs_the_sink(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, settings: Settings
) -> None:
    from authsvc.cli import _dispatch

    await wrong_password(stub, alice)
    expected = await server.app.db.read(_per_organisation)
    async with serving(Receiver()) as receiver:
        configured = webhook_settings(settings, receiver, audit_webhook_poll_s=0.05)
        stop = asyncio.Event()
        running = asyncio.create_task(_dispatch(configured, stop))
        try:
            for _ in range(400):
                if dict(receiver.accepted) == expected:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
    assert dict(receiver.accepted) == expected


# ---- settings ----------------------------------------------------------------------------------


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="go together"):
        Settings(audit_webhook_url="https://siem.example/intake")
    with pytest.raises(ValidationError, match="go together"):
        Settings(audit_webhook_secret=SecretStr(SECRET))
    with pytest.raises(ValidationError, match="twice"):
        Settings(
            audit_webhook_url="https://siem.example/intake",
            audit_webhook_secret=SecretStr(SECRET),
            audit_webhook_timeout_s=10,
            audit_webhook_lease_s=15,
        )
    with pytest.raises(ValidationError):
        Settings(audit_webhook_url="ftp://siem.example/", audit_webhook_secret=SecretStr(SECRET))
    assert Settings(audit_webhook_url="http://127.0.0.1:9/x", audit_webhook_secret=SecretStr("s"))


def test_production_needs_https_and_a_long_secret() -> None:
    from unit.test_config import STRICT

    good = {"audit_webhook_url": "https://siem.example/intake", "audit_webhook_secret": "x" * 32}
    assert Settings(**STRICT, **good).audit_webhook_url == good["audit_webhook_url"]  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="AUDIT_WEBHOOK_URL: production needs an https"):
        Settings(**{**STRICT, **good, "audit_webhook_url": "http://siem.example/intake"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(**{**STRICT, **good, "audit_webhook_secret": "x" * 31})  # type: ignore[arg-type]

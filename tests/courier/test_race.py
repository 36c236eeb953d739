"""Two dispatchers, each with its own engine and connection pool (as two processes or replicas
would be), drain 1,000 messages at once: every message is sent exactly once. On PostgreSQL the
claim is FOR UPDATE SKIP LOCKED; SQLite runs the same test with its serialised writers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy import func, select

from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.outbox import enqueue
from authsvc.courier.providers import Provider
from authsvc.courier.templates import Rendered
from authsvc.db import MessageStatus, OutboxMessage

COUNT = 1000


class Gateway:
    """One gateway shared by both dispatchers: counts what each destination received."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.by_dispatcher: Counter[str] = Counter()
        self.all_in = asyncio.Event()

    def for_dispatcher(self, name: str) -> Provider:
        gateway = self

        class Link:
            async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
                await asyncio.sleep(0.001)  # a network round trip lets the other one in
                gateway.received[text] += 1
                gateway.by_dispatcher[name] += 1
                if sum(gateway.received.values()) >= COUNT:
                    gateway.all_in.set()
                return f"{name}-{text}"

        return Link()


@pytest.fixture
async def apps(settings: Settings, clock: FrozenClock) -> AsyncIterator[tuple[App, App]]:
    fast = settings.model_copy(update={"dispatcher_poll_s": 0.01})
    first, second = App.build(fast, clock), App.build(fast, clock)
    yield first, second
    await first.close()
    await second.close()


@pytest.mark.slow
async def test_two_dispatchers_send_each_of_1000_messages_exactly_once(
    apps: tuple[App, App],
) -> None:
    first, second = apps
    async with first.write() as db:
        for n in range(COUNT):
            enqueue(
                first,
                db,
                channel="sms",
                template="race",
                to=f"+336{n:08d}",
                masked_to="+33 •••••••••",
                message=Rendered(text=f"message {n}", summary="message"),
                flow_id=None,
            )
    gateway = Gateway()
    stop = asyncio.Event()
    started = time.monotonic()
    runs = [
        asyncio.create_task(Dispatcher(app, {"sms": gateway.for_dispatcher(name)}).run(stop))
        for name, app in (("one", first), ("two", second))
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gateway.all_in.wait(), 45)
    stop.set()
    await asyncio.gather(*runs)
    elapsed = time.monotonic() - started

    assert len(gateway.received) == COUNT, f"{len(gateway.received)} of {COUNT} in {elapsed:.1f}s"
    assert set(gateway.received.values()) == {1}, "a message was sent twice"
    assert min(gateway.by_dispatcher.values()) > 0, dict(gateway.by_dispatcher)  # both worked
    async with first.read() as db:
        statuses = dict(
            (await db.execute(select(OutboxMessage.status, func.count()).group_by("status"))).all()
        )
        purged = await db.scalar(
            select(func.count()).where(OutboxMessage.payload_sealed.is_not(None))
        )
    assert statuses == {MessageStatus.SENT: COUNT} and purged == 0
    print(f"{COUNT} messages, 2 dispatchers: {elapsed:.2f} s, split {dict(gateway.by_dispatcher)}")

"""The dispatcher on a real database: delivery, purge, retries, abandon, leases, no double send,
a dispatcher task killed mid-send, a slow gateway that holds nothing back, expired codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import pytest
from sqlalchemy import select

from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.courier.dispatcher import MAX_ATTEMPTS, Dispatcher
from authsvc.courier.outbox import enqueue
from authsvc.courier.providers import DeliveryError, Provider
from authsvc.courier.templates import Rendered
from authsvc.db import MessageStatus, OutboxMessage


class Recorder:
    """A provider that keeps what it was given; fails the first `failures` calls."""

    def __init__(self, failures: int = 0, *, permanent: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.failures = failures
        self.permanent = permanent

    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        await asyncio.sleep(0)  # let concurrent dispatchers interleave
        if self.failures:
            self.failures -= 1
            raise DeliveryError("gateway said no", permanent=self.permanent)
        self.sent.append((to, text))
        return f"id-{len(self.sent)}"


@pytest.fixture
async def app(settings: Settings, clock: FrozenClock) -> AsyncIterator[App]:
    app = App.build(settings, clock)
    yield app
    await app.close()


async def queue(app: App, count: int = 1) -> None:
    async with app.write() as db:
        for n in range(count):
            enqueue(
                app,
                db,
                channel="sms",
                template="test",
                to=f"+3361234{n:04d}",
                masked_to="+33 •••••••00",
                message=Rendered(text=f"code {n:06d}", summary="code ••••", secrets=(f"{n:06d}",)),
                flow_id=None,
            )


def providers(recorder: Provider) -> dict[str, Provider]:
    return {"sms": recorder, "voice": recorder, "email": recorder}


async def messages(app: App) -> list[OutboxMessage]:
    async with app.read() as db:
        return list(await db.scalars(select(OutboxMessage)))


async def test_sent_message_is_purged(app: App) -> None:
    recorder = Recorder()
    await queue(app)
    assert await Dispatcher(app, providers(recorder)).run_once() == 1
    assert recorder.sent == [("+33612340000", "code 000000")]
    (message,) = await messages(app)
    assert message.status == MessageStatus.SENT and message.payload_sealed is None
    assert message.provider_message_id == "id-1" and message.attempts == 1
    assert message.summary == "code ••••"  # what remains: masked destination, the summary


async def test_transient_failures_retry_with_backoff_then_abandon(
    app: App, clock: FrozenClock
) -> None:
    recorder = Recorder(failures=MAX_ATTEMPTS)
    dispatcher = Dispatcher(app, providers(recorder))
    await queue(app)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert await dispatcher.run_once() == 1
        (message,) = await messages(app)
        assert message.attempts == attempt
        if attempt < MAX_ATTEMPTS:
            assert message.status == MessageStatus.FAILED
            assert message.payload_sealed is not None and message.last_error
            assert await dispatcher.run_once() == 0  # not due before its backoff
            clock.advance(2.0**attempt)
    assert message.status == MessageStatus.ABANDONED and message.payload_sealed is None
    assert message.last_error == "gateway said no" and recorder.sent == []


async def test_permanent_failure_is_not_retried(app: App) -> None:
    await queue(app)
    await Dispatcher(app, providers(Recorder(failures=1, permanent=True))).run_once()
    (message,) = await messages(app)
    assert (message.status, message.attempts) == (MessageStatus.ABANDONED, 1)


async def test_a_dead_dispatchers_lease_runs_out_and_another_sends(
    app: App, clock: FrozenClock
) -> None:
    await queue(app)
    claimed = await Dispatcher(app, providers(Recorder())).claim()  # then "dies"
    assert len(claimed) == 1
    survivor = Recorder()
    assert await Dispatcher(app, providers(survivor)).run_once() == 0  # leased
    clock.advance(61)
    assert await Dispatcher(app, providers(survivor)).run_once() == 1
    assert len(survivor.sent) == 1


async def test_concurrent_dispatchers_never_send_a_message_twice(app: App) -> None:
    await queue(app, 100)
    recorders = [Recorder() for _ in range(4)]
    dispatchers = [Dispatcher(app, providers(r)) for r in recorders]
    for _ in range(10):
        await asyncio.gather(*(d.run_once() for d in dispatchers))
    sent = [item for r in recorders for item in r.sent]
    assert len(sent) == 100 and len(set(sent)) == 100
    assert {m.status for m in await messages(app)} == {MessageStatus.SENT}


class Blocking:
    """A provider that holds every call until released: a gateway that hangs."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        self.started.append(to)
        await self.release.wait()
        self.sent.append(to)
        return "blocked-then-sent"


async def wait_until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_dispatcher_killed_mid_send_leaves_the_message_to_another(
    app: App, clock: FrozenClock, settings: Settings
) -> None:
    await queue(app)
    hanging = Blocking()
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(app, providers(hanging)).run(stop))
    await wait_until(lambda: len(hanging.started) == 1)
    task.cancel()  # the process dies while the gateway call is in flight
    with pytest.raises(asyncio.CancelledError):
        await task
    (message,) = await messages(app)
    assert message.status == MessageStatus.SENDING and message.payload_sealed is not None

    survivor = Recorder()
    assert await Dispatcher(app, providers(survivor)).run_once() == 0  # still leased
    clock.advance(settings.dispatcher_lease_s + 1)
    assert await Dispatcher(app, providers(survivor)).run_once() == 1
    (message,) = await messages(app)
    assert (message.status, message.attempts) == (MessageStatus.SENT, 2)
    assert survivor.sent == [("+33612340000", "code 000000")] and hanging.sent == []


async def test_the_dead_dispatchers_late_outcome_cannot_overwrite(
    app: App, clock: FrozenClock, settings: Settings
) -> None:
    """A dispatcher whose lease ran out finishes after another took the message over: its
    outcome is ignored (fenced by the attempt number)."""
    await queue(app)
    slow = Dispatcher(app, providers(Recorder(failures=1)))
    [claimed] = await slow.claim()
    clock.advance(settings.dispatcher_lease_s + 1)
    assert await Dispatcher(app, providers(Recorder())).run_once() == 1
    assert await slow.deliver(claimed) == MessageStatus.FAILED  # what it thinks...
    (message,) = await messages(app)
    assert message.status == MessageStatus.SENT and message.last_error is None  # ...ignored


async def test_a_hanging_gateway_holds_back_no_other_message(app: App) -> None:
    hanging = Blocking()
    stop = asyncio.Event()
    dispatcher = Dispatcher(app, {"sms": hanging, "voice": Recorder(), "email": Recorder()})
    task = asyncio.create_task(dispatcher.run(stop))
    await queue(app)
    app.outbox_ready.set()
    await wait_until(lambda: len(hanging.started) == 1)
    async with app.write() as db:
        enqueue(
            app,
            db,
            channel="email",
            template="test",
            to="bob@example.fr",
            masked_to="b•••@example.fr",
            message=Rendered(text="bonjour", summary="objet\n\nbonjour", subject="objet"),
            flow_id=None,
        )
    app.outbox_ready.set()

    async def statuses() -> dict[str, MessageStatus]:
        return {m.channel: MessageStatus(m.status) for m in await messages(app)}

    deadline = asyncio.get_running_loop().time() + 5
    while (await statuses()).get("email") != MessageStatus.SENT:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert (await statuses())["sms"] == MessageStatus.SENDING
    hanging.release.set()
    stop.set()
    await asyncio.wait_for(task, 5)  # a graceful stop lets the call in flight finish
    assert await statuses() == {"sms": MessageStatus.SENT, "email": MessageStatus.SENT}

"""The dispatcher: claims due outbox messages, delivers them, purges their codes.

Statuses: queued -> sending (claimed under a lease) -> sent, or failed (retried at
next_attempt_at with exponential backoff and jitter) -> sending -> ... -> abandoned after the
fifth attempt or a permanent refusal; a delivery receipt then moves sent to delivered or
undelivered (courier/receipts.py). Sent and abandoned messages lose their sealed payload (the
destination and the text with its code) in the same statement that records the outcome; the
masked destination and the code-free summary stay.

A claim is one conditional UPDATE that moves due rows (queued or failed and due, or sending with
a lease that ran out because a dispatcher died mid-send) to sending and counts the attempt. On
PostgreSQL the candidate rows are chosen with FOR UPDATE SKIP LOCKED, so concurrent dispatchers
(tasks, processes, replicas) never wait on or take the same message; the due condition is
repeated in the UPDATE, so a row claimed meanwhile is never claimed twice. SQLite serialises
writers, which makes the same statement atomic there. Every outcome is written only if the row is
still the one this dispatcher claimed (status sending and the same attempt number): a dispatcher
whose lease ran out cannot overwrite the outcome of the one that took over.

Each channel has an ordered list of providers, each with its circuit breaker (courier/failover.py):
an attempt goes to the provider the breakers choose; after a timeout or retryable failure the
message's next attempt is due at once when another provider would take it (backoff only when
none would), with the same message id, so a gateway can deduplicate. The code's lifetime is
checked before every attempt, on whichever provider. outbox.provider records the provider of the
last attempt: the one that accepted, once sent.

Provider calls run as tasks, at most `dispatcher_concurrency` at once, so a slow gateway never
holds back a message queued meanwhile; the API never waits on a provider (Challenge waits at most
`delivery_wait_s` for a notice, see outcomes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, Connection, and_, bindparam, case, null, or_, select, update

from authsvc import metrics, tracing
from authsvc.app import App
from authsvc.campaigns import campaign
from authsvc.courier import outcomes
from authsvc.courier.failover import Failover
from authsvc.courier.outbox import Payload
from authsvc.courier.providers import (
    CHANNELS,
    DeliveryError,
    MessageProvider,
    Outgoing,
    Provider,
    Route,
    build_routes,
)
from authsvc.courier.redaction import Redactor
from authsvc.db import MessageStatus, OutboxMessage, Receipt
from authsvc.db.statements import outbox as outbox_statements
from authsvc.db.statements import receipts

log = structlog.get_logger("authsvc.dispatcher")

MAX_ATTEMPTS = 5
BATCH = 32
MAX_ERROR_CHARS = 400
# The outbox gauges (depth, oldest age) are read at most this often, only while recording.
OUTBOX_GAUGE_INTERVAL_S = 5.0


def redact(error: Exception, payload: Payload) -> str:
    """What is stored (last_error) and logged of a provider's failure: masked with the message's
    own payload (courier/redaction.py); the gateway's words only as a masked, bounded excerpt."""
    redactor = Redactor(payload)
    if isinstance(error, DeliveryError):
        said = redactor.mask(str(error))
        if error.detail:
            said = f"{said}: {redactor.excerpt(error.detail)}"
    else:  # a provider bug: its message is as untrusted as a gateway's
        said = f"{type(error).__name__}: {redactor.excerpt(str(error))}"
    said = " ".join(said.split())
    return said if len(said) <= MAX_ERROR_CHARS else said[: MAX_ERROR_CHARS - 1] + "…"


# The delivery metric's outcome of a failed attempt.
_OUTCOME = {
    MessageStatus.FAILED: "retry",
    MessageStatus.ABANDONED: "abandoned",
    MessageStatus.SENT: "sent",
    MessageStatus.DELIVERED: "sent",  # an attempt that failed on our side reached the phone
    MessageStatus.SENDING: "retry",
    MessageStatus.QUEUED: "retry",
}


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter: between 1-2, 2-4, 4-8, 8-16 s after attempts 1 to 4."""
    ceiling = 2.0**attempt
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not a secret)


_OUTBOX = OutboxMessage.__table__.c
_NOW = bindparam("o_now", type_=_OUTBOX.next_attempt_at.type)
# A message to send now: queued or failed and due, or sending with its lease run out.
_DUE = or_(
    and_(
        _OUTBOX.status.in_([MessageStatus.QUEUED.value, MessageStatus.FAILED.value]),
        _OUTBOX.next_attempt_at <= _NOW,
    ),
    and_(_OUTBOX.status == MessageStatus.SENDING.value, _OUTBOX.lease_until < _NOW),
)
_ANYTHING_DUE = select(_OUTBOX.id).where(_DUE).limit(1)


def _anything_due(connection: Connection, now: datetime) -> bool:
    """Whether a claim would find a message (the same condition as `claim`'s)."""
    return connection.execute(_ANYTHING_DUE, {"o_now": now}).first() is not None


class Dispatcher:
    def __init__(
        self,
        app: App,
        providers: Mapping[str, Provider | Sequence[Route]] | None = None,
        *,
        on_channel: Callable[[str, bool], None] | None = None,
    ) -> None:
        """`providers`: a test's own, per channel (one provider, or its ordered routes);
        otherwise the configured ones. `on_channel(channel, serving)` hears each change of a
        channel's health (serve's gRPC health names)."""
        self._app = app
        if providers is None:
            self._routes = build_routes(app.settings)
        else:
            self._routes = {
                channel: tuple(given)
                if isinstance(given, Sequence)
                else (self._custom_route(channel, given),)
                for channel, given in providers.items()
            }
        self._owns_providers = providers is None
        self.failover = Failover(
            self._routes,
            threshold=app.settings.provider_breaker_failures,
            open_s=app.settings.provider_breaker_open_s,
            on_channel=on_channel,
        )

    def _custom_route(self, channel: str, provider: Provider) -> Route:
        """A test's single provider: recorded under its own name, else the channel's kind
        (receipts are matched against it: courier/receipts.py)."""
        name = getattr(provider, "name", None)
        if isinstance(name, str) and name:
            recorded = name[:64]
        else:
            recorded = str(getattr(self._app.settings, f"{channel}_provider"))
        return Route(name="custom", recorded_as=recorded, kind="custom", provider=provider)

    # ---- claim ---------------------------------------------------------------------------------

    async def claim(self, limit: int = BATCH) -> list[OutboxMessage]:
        now = self._app.clock.now()
        candidates = (
            select(OutboxMessage.id)
            .where(_DUE)
            .order_by(OutboxMessage.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        # Idle polls (every `dispatcher_poll_s`) only read: one round trip, and on SQLite no
        # write lock taken from the hot paths' writer when nothing is due.
        if not await self._app.db.read(_anything_due, now):
            return []
        async with self._app.write() as db:
            result = await db.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(candidates.scalar_subquery()), _DUE)
                .values(
                    status=MessageStatus.SENDING,
                    lease_until=now + timedelta(seconds=self._app.settings.dispatcher_lease_s),
                    attempts=OutboxMessage.attempts + 1,
                )
                .returning(OutboxMessage)
                .execution_options(synchronize_session=False),
                {"o_now": now},
            )
            return list(result.scalars())

    # ---- deliver -------------------------------------------------------------------------------

    async def deliver(self, message: OutboxMessage) -> MessageStatus:
        """One attempt at one claimed message; returns the status it was left in."""
        if message.payload_sealed is None:  # purged by an earlier, slower dispatcher
            return MessageStatus(message.status)
        if message.attempts > MAX_ATTEMPTS:  # the last attempt's dispatcher died mid-send
            return await self._abandon(message, "lease expired on the last attempt")
        if message.flow_id is not None and self._code_expired(message):
            return await self._abandon(message, "the code expired before delivery")
        if message.template in campaign.TEMPLATES and await campaign.superseded(
            self._app, message.id
        ):  # a reminder stops the moment its account is ready, even once queued
            return await self._abandon(message, "no longer needed: the account is ready")
        now = self._app.clock.now()
        # The provider of the last attempt (outbox.provider): the failover moves past it.
        last_tried = message.provider if message.attempts > 1 else None
        route = self.failover.choose(message.channel, last_tried, now)
        payload = Payload.loads(
            self._app.keys.sealer.open(message.payload_sealed, message.id.bytes)
        )
        provider = route.provider
        kind = "code" if message.flow_id is not None else "notice"
        self.failover.started(message.channel, route, now)
        called = time.perf_counter()
        try:
            # Names only: the destination and the text stay out of the span.
            with tracing.span(
                "provider.send",
                **{
                    "authsvc.channel": message.channel,
                    "authsvc.provider": type(provider).__name__,
                    "authsvc.provider_name": route.name,
                },
            ):
                if isinstance(provider, MessageProvider):
                    provider_id = await provider.deliver(
                        Outgoing(
                            id=message.id,
                            channel=message.channel,
                            to=payload.to,
                            text=payload.text,
                            created_at=message.created_at,
                            attempt=message.attempts,
                            subject=payload.subject,
                            html=payload.html,
                            receipt_token=self._app.keys.receipt_token(message.id.bytes),
                        )
                    )
                else:
                    provider_id = await provider.send(
                        channel=message.channel,
                        to=payload.to,
                        text=payload.text,
                        created_at=message.created_at,
                    )
        except DeliveryError as error:
            metrics.provider_call(
                route.kind,
                time.perf_counter() - called,
                "permanent" if error.permanent else "transient",
            )
            # A permanent refusal (a bad number) is an answer: the provider is up.
            if error.permanent:
                self.failover.answered(message.channel, route, self._app.clock.now())
            else:
                self.failover.failed(message.channel, route, self._app.clock.now())
            detail = redact(error, payload)
            status = await self._failed(message, detail, route, permanent=error.permanent)
            metrics.delivery(message.channel, route.kind, kind, _OUTCOME[status])
            return status
        except Exception as error:  # a provider bug must not kill the dispatcher
            metrics.provider_call(route.kind, time.perf_counter() - called, "crash")
            self.failover.failed(message.channel, route, self._app.clock.now())
            status = await self._failed(message, redact(error, payload), route, permanent=False)
            metrics.delivery(message.channel, route.kind, kind, _OUTCOME[status])
            return status
        metrics.provider_call(route.kind, time.perf_counter() - called, None)
        metrics.delivery(message.channel, route.kind, kind, "sent")
        self.failover.answered(message.channel, route, self._app.clock.now())
        # A gateway's id is its own words too: masked by value (an id has digits: no excerpt).
        provider_id = Redactor(payload).mask(provider_id)[:128]
        if not await self._finish(
            message,
            MessageStatus.SENT,
            provider_id=provider_id,
            provider_name=route.recorded_as,
        ):
            return MessageStatus.SENT
        log.info(
            "message_sent",
            message_id=str(message.id),
            channel=message.channel,
            template=message.template,
            to=message.destination_masked,
            attempt=message.attempts,
            provider=route.name,
        )
        return MessageStatus.SENT

    def _code_expired(self, message: OutboxMessage) -> bool:
        lifetime = timedelta(seconds=self._app.settings.code_ttl_s)
        return message.created_at + lifetime <= self._app.clock.now()

    async def _abandon(
        self, message: OutboxMessage, error: str, provider_name: str | None = None
    ) -> MessageStatus:
        await self._finish(
            message, MessageStatus.ABANDONED, error=error, provider_name=provider_name
        )
        log.warning(
            "message_abandoned",
            message_id=str(message.id),
            channel=message.channel,
            template=message.template,
            to=message.destination_masked,
            attempt=message.attempts,
            error=error,
        )
        return MessageStatus.ABANDONED

    async def _failed(
        self, message: OutboxMessage, error: str, route: Route, *, permanent: bool
    ) -> MessageStatus:
        if permanent or message.attempts >= MAX_ATTEMPTS:
            return await self._abandon(message, error, route.recorded_as)
        now = self._app.clock.now()
        # Another provider would take it now: no reason to wait (the failover's point).
        switch = self.failover.other_available(message.channel, route, now)
        retry_in = 0.0 if switch else backoff_s(message.attempts)
        # A receipt noted while this attempt was in flight speaks for it: "delivered" means the
        # phone has the code whatever our side saw (a retry would send it twice): the message
        # ends delivered. Any other word was this attempt's; the next attempt starts clean
        # (else its success would be recorded with the failed attempt's "undelivered").
        reached = OutboxMessage.receipt == Receipt.DELIVERED.value
        async with self._app.write() as db:
            ended = await db.scalar(
                update(OutboxMessage)
                .where(self._still_ours(message))
                .values(
                    status=case(
                        (reached, MessageStatus.DELIVERED.value), else_=MessageStatus.FAILED.value
                    ),
                    payload_sealed=case((reached, null()), else_=OutboxMessage.payload_sealed),
                    receipt=case((reached, OutboxMessage.receipt), else_=null()),
                    receipt_at=case((reached, OutboxMessage.receipt_at), else_=null()),
                    next_attempt_at=now + timedelta(seconds=retry_in),
                    lease_until=None,
                    last_error=error,
                    provider=route.recorded_as,  # the next attempt moves past it
                )
                .returning(OutboxMessage.status)
                .execution_options(synchronize_session=False)
            )
        outcomes.notify(message.flow_id)
        if ended == MessageStatus.DELIVERED:
            log.info("message_delivered_despite_error", message_id=str(message.id), error=error)
            return MessageStatus.DELIVERED
        if switch:
            self._app.outbox_ready.set()  # wake the loop: the message is due now
        log.info(
            "message_retry",
            message_id=str(message.id),
            channel=message.channel,
            attempt=message.attempts,
            retry_in_s=round(retry_in, 1),
            provider=route.name,
            error=error,
        )
        return MessageStatus.FAILED

    @staticmethod
    def _still_ours(message: OutboxMessage) -> ColumnElement[bool]:
        return and_(
            OutboxMessage.id == message.id,
            OutboxMessage.status == MessageStatus.SENDING,
            OutboxMessage.attempts == message.attempts,
        )

    async def _finish(
        self,
        message: OutboxMessage,
        status: MessageStatus,
        *,
        provider_id: str | None = None,
        provider_name: str | None = None,
        error: str | None = None,
    ) -> bool:
        # The sealed payload (destination and code) is dropped for good in the same statement.
        now = self._app.clock.now()
        async with self._app.write() as db:
            result = await db.execute(
                update(OutboxMessage)
                .where(self._still_ours(message))
                .values(
                    # A receipt that came before the gateway's answer is applied now.
                    status=receipts.status_when_sent() if status is MessageStatus.SENT else status,
                    payload_sealed=None,
                    lease_until=None,
                    provider_message_id=provider_id,
                    provider=provider_name,
                    last_error=error,
                    sent_at=now if status is MessageStatus.SENT else None,
                )
            )
        outcomes.notify(message.flow_id)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # ---- loops ---------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim one batch and deliver it; the number of messages claimed."""
        messages = await self.claim()
        await asyncio.gather(*(self.deliver(message) for message in messages))
        return len(messages)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then let the calls in flight finish. Wakes at once when a
        flow of this process queues a message, otherwise polls every `dispatcher_poll_s`.
        Cancelling the task (a crash, in tests) abandons the calls in flight: their messages
        stay leased, and are claimed again once the lease runs out."""
        settings = self._app.settings
        ready = self._app.outbox_ready
        in_flight: set[asyncio.Task[MessageStatus]] = set()
        loop = asyncio.get_running_loop()
        next_gauge = loop.time()
        try:
            while not stop.is_set():
                if metrics.state.on and loop.time() >= next_gauge:
                    next_gauge = loop.time() + OUTBOX_GAUGE_INTERVAL_S
                    await self._gauge_outbox()
                ready.clear()  # before claiming: a message queued meanwhile wakes the next wait
                free = settings.dispatcher_concurrency - len(in_flight)
                claimed: list[OutboxMessage] = []
                if free > 0:
                    try:
                        claimed = await self.claim(min(free, BATCH))
                    except Exception:
                        log.exception("dispatcher_error")
                for message in claimed:
                    task = asyncio.create_task(self._deliver_logged(message))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claimed and len(claimed) == min(free, BATCH):
                    continue  # maybe more are due
                await self._idle(stop, in_flight, full=free <= 0)
            if in_flight:
                await asyncio.wait(in_flight)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            raise
        finally:
            if self._owns_providers:
                await self.close()

    async def _gauge_outbox(self) -> None:
        """Read the outbox's depth and oldest waiting message for the gauges (one grouped,
        indexed read; every channel and status set, zero included)."""
        try:
            groups = await self._app.db.read(outbox_statements.waiting)
        except Exception:  # a gauge must never stop deliveries
            log.warning("outbox_gauge_failed")
            return
        now = self._app.clock.now()
        depths = {(c, s): 0 for c in CHANNELS for s in outbox_statements.WAITING}
        oldest = dict.fromkeys(CHANNELS, 0.0)
        for channel, status, count, created_at in groups:
            if channel not in oldest or status not in outbox_statements.WAITING:
                continue
            depths[(channel, status)] = count
            if created_at is not None:
                if created_at.tzinfo is None:
                    created_at = created_at.replace(tzinfo=UTC)
                age = max((now - created_at).total_seconds(), 0.0)
                oldest[channel] = max(oldest[channel], age)
        metrics.outbox(depths, oldest)

    async def _deliver_logged(self, message: OutboxMessage) -> MessageStatus:
        try:
            return await self.deliver(message)
        except Exception:  # a database error while recording: the lease will run out
            log.exception("dispatcher_error", message_id=str(message.id))
            return MessageStatus.SENDING

    async def _idle(
        self, stop: asyncio.Event, in_flight: set[asyncio.Task[MessageStatus]], *, full: bool
    ) -> None:
        waiters: set[asyncio.Future[object]] = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._app.outbox_ready.wait()),
        }
        watched: set[asyncio.Future[object]] = set(waiters)
        if full:  # nothing can be claimed before a call in flight ends
            watched |= set(in_flight)  # type: ignore[arg-type]
        try:
            await asyncio.wait(
                watched,
                timeout=self._app.settings.dispatcher_poll_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def close(self) -> None:
        """Release the providers' connections."""
        every = [route.provider for routes in self._routes.values() for route in routes]
        for provider in {id(p): p for p in every}.values():
            if isinstance(provider, MessageProvider):
                with contextlib.suppress(Exception):
                    await provider.aclose()

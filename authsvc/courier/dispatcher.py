"""The dispatcher: claims due outbox messages, delivers them, purges their codes.

A claim is one conditional UPDATE that moves rows from queued (or from a sending lease that ran
out, when a dispatcher died mid-send) to sending. On PostgreSQL the candidate rows are chosen with
FOR UPDATE SKIP LOCKED so that concurrent dispatchers never wait on or take the same message; the
status condition is repeated in the UPDATE so that a row claimed meanwhile is never claimed twice.
SQLite serialises writers, which makes the same statement atomic there.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from datetime import timedelta

import structlog
from sqlalchemy import and_, or_, select, update

from authsvc.app import App
from authsvc.courier.outbox import Payload
from authsvc.courier.providers import DeliveryError, Provider, build_providers
from authsvc.db import MessageStatus, OutboxMessage

log = structlog.get_logger("authsvc.dispatcher")

MAX_ATTEMPTS = 5
LEASE_S = 60
BATCH = 32


# A run of digits long enough to be a phone number, however a gateway spaces or prefixes it.
_NUMBER = re.compile(r"\+?\d(?:[\s().-]*\d){5,}")


def redact(error: str) -> str:
    """Provider errors often quote the destination: drop numbers before storing or logging."""
    return _NUMBER.sub("[number]", error)[:1000]


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter: up to 2, 4, 8, 16 s after attempts 1 to 4."""
    return random.uniform(0.5, 2.0**attempt)  # noqa: S311 (jitter, not a secret)


class Dispatcher:
    def __init__(self, app: App, providers: dict[str, Provider] | None = None) -> None:
        self._app = app
        self._providers = providers or build_providers(app.settings)

    async def claim(self) -> list[OutboxMessage]:
        now = self._app.clock.now()
        due = or_(
            and_(
                OutboxMessage.status == MessageStatus.QUEUED,
                OutboxMessage.next_attempt_at <= now,
            ),
            and_(OutboxMessage.status == MessageStatus.SENDING, OutboxMessage.lease_until < now),
        )
        candidates = (
            select(OutboxMessage.id)
            .where(due)
            .order_by(OutboxMessage.next_attempt_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        async with self._app.write() as db:
            result = await db.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(candidates.scalar_subquery()), due)
                .values(
                    status=MessageStatus.SENDING,
                    lease_until=now + timedelta(seconds=LEASE_S),
                    attempts=OutboxMessage.attempts + 1,
                )
                .returning(OutboxMessage)
                .execution_options(synchronize_session=False)
            )
            return list(result.scalars())

    async def deliver(self, message: OutboxMessage) -> None:
        if message.payload_sealed is None:  # purged by an earlier, slower dispatcher
            return
        payload = Payload.loads(
            self._app.keys.sealer.open(message.payload_sealed, message.id.bytes)
        )
        provider = self._providers[message.channel]
        try:
            provider_id = await provider.send(
                channel=message.channel,
                to=payload.to,
                text=payload.text,
                created_at=message.created_at,
            )
        except DeliveryError as error:
            await self._failed(message, redact(str(error)), permanent=error.permanent)
        except Exception as error:  # a provider bug must not kill the dispatcher
            await self._failed(message, redact(f"{type(error).__name__}: {error}"), permanent=False)
        else:
            await self._finish(message.id, MessageStatus.SENT, provider_id=provider_id)
            log.info(
                "message_sent",
                message_id=str(message.id),
                channel=message.channel,
                to=message.destination_masked,
                attempt=message.attempts,
            )

    async def _failed(self, message: OutboxMessage, error: str, *, permanent: bool) -> None:
        if permanent or message.attempts >= MAX_ATTEMPTS:
            await self._finish(message.id, MessageStatus.ABANDONED, error=error)
            log.warning(
                "message_abandoned",
                message_id=str(message.id),
                channel=message.channel,
                to=message.destination_masked,
                error=error,
            )
            return
        retry_at = self._app.clock.now() + timedelta(seconds=backoff_s(message.attempts))
        async with self._app.write() as db:
            await db.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == message.id, OutboxMessage.status == MessageStatus.SENDING
                )
                .values(
                    status=MessageStatus.QUEUED,
                    next_attempt_at=retry_at,
                    lease_until=None,
                    last_error=error,
                )
            )
        log.info(
            "message_retry",
            message_id=str(message.id),
            channel=message.channel,
            attempt=message.attempts,
            error=error,
        )

    async def _finish(
        self,
        message_id: uuid.UUID,
        status: MessageStatus,
        *,
        provider_id: str | None = None,
        error: str | None = None,
    ) -> None:
        # The sealed payload (destination and code) is dropped for good in the same statement.
        now = self._app.clock.now()
        async with self._app.write() as db:
            await db.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message_id)
                .values(
                    status=status,
                    payload_sealed=None,
                    lease_until=None,
                    provider_message_id=provider_id,
                    last_error=error,
                    sent_at=now if status is MessageStatus.SENT else None,
                )
            )

    async def run_once(self) -> int:
        messages = await self.claim()
        await asyncio.gather(*(self.deliver(message) for message in messages))
        return len(messages)

    async def run(self, stop: asyncio.Event) -> None:
        """Drain the outbox until `stop` is set; wake early when a flow queues a message."""
        ready = self._app.outbox_ready
        while not stop.is_set():
            ready.clear()  # before claiming, so a message queued meanwhile wakes the next wait
            try:
                sent = await self.run_once()
            except Exception:
                log.exception("dispatcher_error")
                sent = 0
            if sent:
                continue
            waiters = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(
                waiters,
                timeout=self._app.settings.dispatcher_poll_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in waiters:
                waiter.cancel()

"""The audit webhook sink: each organisation's audit events POSTed in order, in signed batches,
at least once, with the audit table itself as the outbox.

Per (sink, organisation) a cursor row (audit_sink_cursors) holds the position of the last event
delivered. A dispatcher leases the row (one conditional UPDATE: only a free row whose backoff is
over), reads the next settled events after it (db/statements/audit_feed.py), POSTs them as one
JSON body, and on a 2xx advances the cursor to the batch's last event with one conditional
UPDATE: only if it still holds the lease and the cursor is where it read it. So two dispatchers
(tasks, processes, replicas) never send one organisation's events at the same time, and a
dispatcher whose lease was taken over (it stalled beyond AUTHSVC_AUDIT_WEBHOOK_LEASE_S) cannot
move the cursor of the one that took over: at worst a batch is sent twice, never skipped, never
out of order. A failure (a non-2xx answer, a timeout, a refused connection) leaves the cursor
where it was and the organisation backs off (1, 2, 4, ... s with jitter, up to
AUTHSVC_AUDIT_WEBHOOK_MAX_BACKOFF_S): the same events go first next time, nothing skips ahead.
Other organisations go on meanwhile.

The request: `POST <AUTHSVC_AUDIT_WEBHOOK_URL>`, `Content-Type: application/json`, body
`{"organization_id": "<uuid>" | null, "events": [<event>, ...]}` (audit_export.event_json, in
feed order), headers `X-Authsvc-Timestamp: <unix seconds>` and `X-Authsvc-Signature:
sha256=<hex HMAC-SHA-256 of "<timestamp>." + body>` keyed with AUTHSVC_AUDIT_WEBHOOK_SECRET (the
scheme of the receipt webhooks, courier/receipts.py). A receiver checks the signature in
constant time, refuses an old timestamp, and keeps events by `id` (a retried batch repeats ids).
Redirects are not followed: signed audit data goes to the configured URL or nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import aiohttp
import structlog

from authsvc import metrics
from authsvc.app import App
from authsvc.audit_export import event_json
from authsvc.courier.receipts import TIMESTAMP_HEADER, webhook_signature
from authsvc.db.statements import audit_feed
from authsvc.db.statements.audit_feed import NO_ORGANIZATION, Lease, Position

log = structlog.get_logger("authsvc.audit_webhook")

SINK = "webhook"
SIGNATURE_HEADER = "X-Authsvc-Signature"
# Organisations looked at per delivery slot and round (the others wait for the next round).
CANDIDATES_PER_SLOT = 4
MAX_ANSWER_BYTES = 64 * 1024


def backoff_s(failures: int, ceiling_s: float) -> float:
    """After the n-th consecutive failure: between 2^(n-1)/2 and 2^(n-1) s, at most `ceiling_s`."""
    top = min(2.0 ** max(failures - 1, 0), ceiling_s)
    return random.uniform(top / 2, top)  # noqa: S311 (jitter, not a secret)


def signed_headers(secret: bytes, timestamp: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: webhook_signature(secret, timestamp, body),
    }


def batch_body(organization_id: uuid.UUID, rows: Sequence[Any]) -> bytes:
    organization = None if organization_id == NO_ORGANIZATION else str(organization_id)
    document = {"organization_id": organization, "events": [event_json(row) for row in rows]}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class AuditWebhook:
    """One dispatcher of the sink; several may run at once (the leases keep them apart)."""

    def __init__(self, app: App, *, owner: str | None = None) -> None:
        settings = app.settings
        if settings.audit_webhook_url is None or settings.audit_webhook_secret is None:
            raise ValueError("the audit webhook needs AUTHSVC_AUDIT_WEBHOOK_URL and _SECRET")
        self._app = app
        self._url = settings.audit_webhook_url
        self._secret = settings.audit_webhook_secret.get_secret_value().encode()
        self.owner = owner or uuid.uuid4().hex
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._app.settings.audit_webhook_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- one round -----------------------------------------------------------------------------

    async def open_cursors(self) -> int:
        """Cursors for organisations created since the last look (they start at the start)."""
        return await self._app.db.write(audit_feed.open_cursors, SINK)

    async def run_once(self) -> int:
        """Deliver one batch of each due organisation, `audit_webhook_concurrency` at once; the
        number of batches delivered. The candidates are shuffled: dispatchers running side by
        side then mostly lease different organisations instead of racing for the same ones."""
        settings = self._app.settings
        width = settings.audit_webhook_concurrency
        due = await self._app.db.read(
            audit_feed.due, SINK, self._app.clock.now(), CANDIDATES_PER_SLOT * width
        )
        random.shuffle(due)
        slots = asyncio.Semaphore(width)

        async def one(organization_id: uuid.UUID) -> str | None:
            async with slots:
                return await self.deliver(organization_id)

        results = await asyncio.gather(*(one(org) for org in due))
        return sum(1 for result in results if result == "delivered")

    async def deliver(self, organization_id: uuid.UUID) -> str | None:
        """Lease the organisation, POST its next batch, record the outcome; the outcome (a
        metric result), None when there was nothing to do (leased by another, nothing settled)."""
        settings = self._app.settings
        now = self._app.clock.now()
        until = now + timedelta(seconds=settings.audit_webhook_lease_s)
        lease = await self._app.db.statement(
            audit_feed.take_lease, SINK, organization_id, self.owner, now, until
        )
        if lease is None:
            return None  # another dispatcher holds it, or it backs off
        # Should anything below raise, the lease runs out by itself and the batch goes again.
        rows = await self._app.db.read(
            audit_feed.read,
            lease.position,
            settings.audit_webhook_batch,
            organization_id,
            of_organization=True,
        )
        if not rows:
            await self._app.db.statement(audit_feed.release, SINK, lease)
            return None
        result, error = await self._post(batch_body(organization_id, rows))
        if result == "delivered":
            last = rows[-1]
            moved = await self._app.db.statement(
                audit_feed.advance, SINK, lease, Position(last.txid, last.sequence)
            )
            if not moved:
                result = "superseded"
                log.warning("audit_webhook_superseded", organization_id=str(organization_id))
        else:
            await self._failed(lease, error)
        metrics.audit_webhook_batch(result)
        return result

    async def _post(self, body: bytes) -> tuple[str, str]:
        timestamp = str(int(self._app.clock.now().timestamp()))
        try:
            async with self._client().post(
                self._url,
                data=body,
                headers=signed_headers(self._secret, timestamp, body),
                allow_redirects=False,
            ) as response:
                # A bounded read (the connection goes back to the pool); never kept or logged.
                await response.content.read(MAX_ANSWER_BYTES)
                if 200 <= response.status < 300:
                    return "delivered", ""
                return "rejected", f"HTTP {response.status}"
        except TimeoutError:
            return "unreachable", "timeout"
        except aiohttp.ClientError as error:
            return "unreachable", type(error).__name__

    async def _failed(self, lease: Lease, error: str) -> None:
        settings = self._app.settings
        retry_in = backoff_s(lease.failures + 1, settings.audit_webhook_max_backoff_s)
        retry_at = self._app.clock.now() + timedelta(seconds=retry_in)
        await self._app.db.statement(audit_feed.failed, SINK, lease, retry_at, error)
        log.info(
            "audit_webhook_retry",
            organization_id=str(lease.organization_id),
            failures=lease.failures + 1,
            retry_in_s=round(retry_in, 1),
            error=error,
        )

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set: at once again while batches go out, otherwise every
        `audit_webhook_poll_s` (which is also how soon a new organisation's events start)."""
        poll_s = self._app.settings.audit_webhook_poll_s
        loop = asyncio.get_running_loop()
        next_open = loop.time()
        try:
            while not stop.is_set():
                delivered = 0
                try:
                    if loop.time() >= next_open:
                        next_open = loop.time() + poll_s
                        await self.open_cursors()
                    delivered = await self.run_once()
                except Exception:  # a database outage: try again at the next poll
                    log.exception("audit_webhook_error")
                if delivered:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll_s)
        finally:
            await self.close()

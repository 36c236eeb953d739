"""Delivery outcomes inside one process, so that Challenge can wait briefly for its message.

The in-process dispatcher calls `notify(flow_id)` when a message of that flow is sent, failed or
abandoned; `delivery_status(app, flow_id)` waits up to `delivery_wait_s` for such a notice, then
reads where the flow's latest message stands. A dispatcher in another process sends no notice:
the wait then runs out and the answer is "queued" (the caller may ask again with the same
idempotency key). The wait is bounded and nothing in it blocks the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from sqlalchemy import select

from authsvc.app import App
from authsvc.db import MessageStatus, OutboxMessage

# What Challenge reports: a message being retried is still on its way.
DELIVERY = {
    MessageStatus.QUEUED: "queued",
    MessageStatus.SENDING: "queued",
    MessageStatus.FAILED: "queued",
    MessageStatus.SENT: "sent",
    MessageStatus.ABANDONED: "failed",
}

_waiters: defaultdict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)


def notify(flow_id: uuid.UUID | None) -> None:
    if flow_id is None:
        return
    for event in _waiters.get(flow_id, ()):
        event.set()


async def wait(flow_id: uuid.UUID, timeout_s: float) -> bool:
    """Whether a message of the flow reached an outcome within `timeout_s`."""
    event = asyncio.Event()
    _waiters[flow_id].add(event)  # before the first await: no notice can be missed
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False
    finally:
        waiters = _waiters.get(flow_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del _waiters[flow_id]


async def latest_status(app: App, flow_id: uuid.UUID) -> str:
    async with app.read() as db:
        status = await db.scalar(
            select(OutboxMessage.status)
            .where(OutboxMessage.flow_id == flow_id)
            .order_by(OutboxMessage.created_at.desc())
            .limit(1)
        )
    return DELIVERY[MessageStatus(status)] if status else "queued"


async def delivery_status(app: App, flow_id: uuid.UUID) -> str:
    """Where the flow's code delivery stands, after waiting briefly for the in-process
    dispatcher (only when this process runs one)."""
    settings = app.settings
    if not settings.dispatcher_enabled or settings.delivery_wait_s <= 0:
        return "queued"
    if await wait(flow_id, settings.delivery_wait_s):
        return await latest_status(app, flow_id)
    return "queued"

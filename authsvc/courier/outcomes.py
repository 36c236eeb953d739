"""Delivery outcomes inside one process, so that Challenge can wait briefly for its message.

The in-process dispatcher calls `notify(flow_id)` when a message of that flow is sent, failed or
abandoned, and the receipt listener when a receipt changes it; `delivery_status(app, flow_id)`
waits up to `delivery_wait_s` for such a notice, then reads where the flow's latest message
stands. A dispatcher in another process sends no notice: the wait then runs out and the answer
is "queued" (the caller may ask again with the same idempotency key). The wait is bounded and
nothing in it blocks the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from authsvc.app import App
from authsvc.db import MessageStatus
from authsvc.db.statements import outbox

# What Challenge reports: a message being retried is still on its way.
DELIVERY = {
    MessageStatus.QUEUED: "queued",
    MessageStatus.SENDING: "queued",
    MessageStatus.FAILED: "queued",
    MessageStatus.SENT: "sent",
    MessageStatus.ABANDONED: "failed",
    MessageStatus.DELIVERED: "delivered",
    MessageStatus.UNDELIVERED: "undelivered",
}
# A message that did not reach its destination: the flow offers the next channel, and a new
# code may be asked for at once (no resend cooldown).
NOT_DELIVERED = frozenset({MessageStatus.ABANDONED, MessageStatus.UNDELIVERED})

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


async def message_status(app: App, message_id: uuid.UUID) -> MessageStatus | None:
    status = await app.db.read(outbox.status, message_id)
    return MessageStatus(status) if status else None


async def delivery_status(app: App, flow_id: uuid.UUID, message_id: uuid.UUID) -> str:
    """Where the delivery of one of the flow's messages stands, after waiting briefly for the
    in-process dispatcher (only when this process runs one)."""
    settings = app.settings
    if not settings.dispatcher_enabled or settings.delivery_wait_s <= 0:
        return "queued"
    deadline = asyncio.get_running_loop().time() + settings.delivery_wait_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        status = await message_status(app, message_id)
        if status is not None and DELIVERY[status] != "queued":
            return DELIVERY[status]
        # A notice may be about another message of the flow: look again until the deadline.
        if not await wait(flow_id, left):
            break
    status = await message_status(app, message_id)
    return DELIVERY[status] if status else "queued"

"""Challenge: send (or re-send) a code for a pending flow.

The send is decided by one conditional UPDATE on the flow (still pending, not expired, sends
left, cooldown passed), and the outbox message is written in the same decision
(authsvc/db/statements/flows.py: send_code, one statement on PostgreSQL): a code is never
queued without its challenge, nor a challenge recorded without its message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authsvc import audit, metrics
from authsvc.app import App
from authsvc.courier import outbox, outcomes, templates
from authsvc.db import FlowStatus
from authsvc.db.statements import flows
from authsvc.db.statements.flows import AccountRow, FlowRow
from authsvc.errors import Failure
from authsvc.flows import destination, failures, totp
from authsvc.flows.views import ChallengeView
from authsvc.otp import generate_code
from authsvc.policies import lockout, pumping


@dataclass(frozen=True)
class ChallengeRequest:
    flow_id: uuid.UUID
    channel: str | None  # None: the account's default
    idempotency_key: str | None
    ip_address: str = ""  # the end user's, for the per-IP send limit
    # The automatic voice switch (flows/voice_fallback.py): the backend's idempotency key moves
    # to the call; nothing is replayed and nobody waits for the outcome.
    switch_from_sms: bool = False


async def load_flow(app: App, flow_id: uuid.UUID) -> tuple[FlowRow, AccountRow]:
    """The flow and the columns of its account that Challenge and Verify decide on."""
    found = await app.db.read(flows.find, flow_id)
    if found is None:
        raise failures.flow_not_found()
    return found


def ensure_open(flow: FlowRow, now: datetime) -> None:
    """Refuse a flow that can no longer take a code, with the reason why."""
    if flow.status == FlowStatus.COMPLETED:
        raise failures.flow_completed()
    if flow.status == FlowStatus.FAILED:
        raise failures.flow_failed()
    if flow.expires_at <= now:
        raise failures.flow_expired()


def where_to(app: App, flow: FlowRow, account: AccountRow) -> destination.Destination:
    """The flow's destination, its account's other factors listed beside its phone."""
    return destination.of_flow(flow, account, destination.factor_channels(app.settings, account))


def _pick_channel(app: App, flow: FlowRow, account: AccountRow, requested: str | None) -> str:
    allowed = where_to(app, flow, account).channels
    if requested is None:
        return allowed[0]
    if requested not in allowed:
        raise failures.channel_not_available(requested)
    if requested == "passkey":
        raise failures.passkey_by_ceremony()
    return requested


async def challenge(app: App, request: ChallengeRequest) -> ChallengeView:
    flow, account = await load_flow(app, request.flow_id)
    now = app.clock.now()
    ensure_open(flow, now)
    channel = _pick_channel(app, flow, account, request.channel)
    if channel == "totp":
        return await _totp_window(app, flow, account, request, now)
    if not request.switch_from_sms:
        replay = await _idempotent_replay(app, flow, account, request, channel, now)
        if replay is not None:
            return replay
    lockout.check_code_lock(app, account, now)
    # The cooldown protects against sending twice; it does not apply when the last message
    # could not be delivered (abandoned, or undelivered by its receipt): the user would
    # otherwise wait for nothing. The flow's send count and every cap still apply.
    retry_failed = await _in_cooldown_after_failed_delivery(app, flow, now)
    _check_send_allowed(app, flow, now, cooldown=not retry_failed)
    where = where_to(app, flow, account)
    address = destination.address(app, flow, account)
    # Country allow-list, pumping breaker, per-number caps, send budgets (fail closed).
    await pumping.check_send(
        app,
        channel=channel,
        address=address,
        ip=request.ip_address,
        organization_id=str(account.organization_id),
        requester=destination.unverified_requester(flow),
    )

    settings = app.settings
    code = generate_code(settings.code_digits)
    challenge_id = uuid.uuid4()
    code_expires_at = now + timedelta(seconds=settings.code_ttl_s)
    send = flows.CodeSend(
        flow_id=flow.id,
        now=now,
        max_sends=settings.max_sends_per_flow,
        cooldown_start=now - timedelta(seconds=settings.resend_cooldown_s),
        # After a failed delivery: nobody sent since we looked.
        retrying=flow.last_sent_at if retry_failed else None,
        challenge={
            "challenge_id": challenge_id,
            "channel": channel,
            "code_digest": app.keys.code_hasher.digest(code, challenge_id.bytes),
            "code_expires_at": code_expires_at,
            "idempotency_key": request.idempotency_key,
        },
        message=_code_message(app, flow, channel, address, where.masked, code, challenge_id),
        sent=audit.event(
            app.clock,
            "code.sent",
            organization_id=account.organization_id,
            actor=account.id,
            flow_id=str(flow.id),
            purpose=str(flow.purpose),
            channel=channel,
            to=where.masked,
        ),
    )
    if not await app.db.statement(flows.send_code, send):
        # Another call changed the flow between our read and our write: answer from what it
        # is now (an identical concurrent request with the same key gets that challenge).
        flow, account = await load_flow(app, request.flow_id)
        ensure_open(flow, now)
        replay = await _idempotent_replay(app, flow, account, request, channel, now)
        if replay is not None:
            return replay
        _check_send_allowed(app, flow, now)
        # Unreachable unless clocks disagree between replicas: the conservative answer.
        raise failures.resend_too_soon(float(settings.resend_cooldown_s))
    app.outbox_ready.set()
    # Waits up to delivery_wait_s for the in-process dispatcher (courier/outcomes.py).
    delivery = (
        "queued"
        if request.switch_from_sms
        else await outcomes.delivery_status(app, flow.id, challenge_id)
    )
    metrics.code_issued(channel, str(flow.purpose))
    return ChallengeView(
        challenge_id=challenge_id,
        channel=channel,
        masked_destination=where.masked,
        code_expires_at=code_expires_at,
        resend_at=now + timedelta(seconds=settings.resend_cooldown_s),
        sends_remaining=settings.max_sends_per_flow - flow.send_count - 1,
        delivery_status=delivery,
        next_channel=next_channel(where.channels, channel, delivery),
    )


async def _totp_window(
    app: App, flow: FlowRow, account: AccountRow, request: ChallengeRequest, now: datetime
) -> ChallengeView:
    """The app's code needs no send: no send limit, cooldown or budget applies; the window's
    own limits (it writes the flow and an audit row) and the lock of the second factor do
    (no window opens while it is locked)."""
    await app.limits.factor_window(now, flow_id=str(flow.id), ip=request.ip_address or None)
    lockout.check_code_lock(app, account, now)
    view = await totp.open_window(app, flow, account, now)
    if view is None:
        flow, _ = await load_flow(app, request.flow_id)
        ensure_open(flow, now)
        raise failures.flow_failed()  # unreachable unless clocks disagree between replicas
    return view


_PHONE_CHANNELS = ("sms", "voice")


def next_channel(channels: tuple[str, ...], channel: str, delivery: str) -> str | None:
    """The channel to offer after a message that did not arrive: voice after an SMS on a mobile
    (a mobile can take a call), whatever else the destination takes otherwise."""
    if delivery not in ("undelivered", "failed"):
        return None
    # The same destination's other channel only (the proto's contract): the app or a passkey
    # is the flow's to offer from its channels, not a delivery's fallback.
    others = [other for other in channels if other != channel and other in _PHONE_CHANNELS]
    if channel == "sms" and "voice" in others:
        return "voice"
    return others[0] if others else None


_TEXT_PURPOSE: dict[str, str] = {}  # every flow purpose has a wording of its own


def _code_message(
    app: App,
    flow: FlowRow,
    channel: str,
    address: str,
    masked: str,
    code: str,
    challenge_id: uuid.UUID,
) -> dict[str, Any]:
    """The outbox row of the code's message."""
    settings = app.settings
    # Linking a federated identity says what it grants: the holder consents knowingly.
    purpose = _TEXT_PURPOSE.get(str(flow.purpose), str(flow.purpose))
    message = templates.code_message(
        channel,
        purpose=purpose,
        code=code,
        minutes=settings.code_ttl_s // 60,
        service=settings.service_name,
        domain=settings.webotp_domain,
    )
    return outbox.row(
        app,
        channel=channel,
        template=f"{purpose}_code_{channel}",
        to=address,
        masked_to=masked,
        message=message,  # its summary is the template with placeholders
        flow_id=flow.id,
        message_id=challenge_id,  # one message per challenge: its delivery is one key away
    )


async def _in_cooldown_after_failed_delivery(app: App, flow: FlowRow, now: datetime) -> bool:
    cooldown = timedelta(seconds=app.settings.resend_cooldown_s)
    if flow.last_sent_at is None or now >= flow.last_sent_at + cooldown:
        return False  # not in the cooldown: nothing to look up
    if flow.challenge_id is None:
        return False
    return await outcomes.message_status(app, flow.challenge_id) in outcomes.NOT_DELIVERED


def _check_send_allowed(app: App, flow: FlowRow, now: datetime, *, cooldown: bool = True) -> None:
    settings = app.settings
    if flow.send_count >= settings.max_sends_per_flow:
        valid_for = (flow.code_expires_at - now).total_seconds() if flow.code_expires_at else 0.0
        raise failures.send_limit_reached(valid_for)
    if cooldown and flow.last_sent_at is not None:
        resend_at = flow.last_sent_at + timedelta(seconds=settings.resend_cooldown_s)
        if now < resend_at:
            raise failures.resend_too_soon((resend_at - now).total_seconds())


async def _idempotent_replay(
    app: App,
    flow: FlowRow,
    account: AccountRow,
    request: ChallengeRequest,
    channel: str,
    now: datetime,
) -> ChallengeView | None:
    """The same idempotency key within the code's lifetime: the same challenge, nothing sent."""
    key = request.idempotency_key
    if (
        key is None
        or flow.idempotency_key != key
        or flow.challenge_id is None
        or flow.code_expires_at is None
        or flow.code_expires_at <= now
    ):
        return None
    if request.channel is None and flow.channel is not None:
        channel = flow.channel  # the key's challenge, on the channel it went (a voice switch)
    if flow.channel != channel:
        raise Failure(
            "FAILED_PRECONDITION",
            "IDEMPOTENCY_KEY_REUSED",
            "this idempotency key was used for another request",
        )
    status = await outcomes.message_status(app, flow.challenge_id)
    assert flow.last_sent_at is not None
    where = where_to(app, flow, account)
    delivery = outcomes.DELIVERY[status] if status else "queued"
    return ChallengeView(
        challenge_id=flow.challenge_id,
        channel=channel,
        masked_destination=where.masked,
        code_expires_at=flow.code_expires_at,
        resend_at=flow.last_sent_at + timedelta(seconds=app.settings.resend_cooldown_s),
        sends_remaining=app.settings.max_sends_per_flow - flow.send_count,
        delivery_status=delivery,
        next_channel=next_channel(where.channels, channel, delivery),
    )

"""SMS (and voice) pumping: fraudsters make a service send codes to numbers whose operators
pay them per message. Defences, in the order a send meets them:

1. destination countries allow-listed per channel (default: France and its overseas
   departments and territories) -> CHANNEL_NOT_AVAILABLE;
2. a breaker per number prefix (the E.164 number without its last digits) that is open ->
   RATE_LIMITED ("phone_prefix") until it closes or an operator resets it;
3. the send limits of policies/ratelimit.py: per IP, per number (at most 10 an hour and 20 a
   day), per prefix, per organisation and global budgets. When the prefix limit refuses, the
   prefix's breaker trips: one log line (warning), one row in `send_breakers`, visible with
   `authsvc breaker list` and closed with `authsvc breaker reset`.

A code to a destination not yet verified for the account (`requester` given: a contact being
changed) meets the same country list and open breakers, but is charged to the requester and
never counts toward the number's caps or the prefix's breaker: otherwise any member could
block a chosen number's (or prefix's) login codes by typing it as their new contact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import phonenumbers
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from authsvc import metrics
from authsvc.app import App
from authsvc.db import SendBreaker
from authsvc.db.statements import breakers
from authsvc.errors import rate_limited
from authsvc.flows import failures

log = structlog.get_logger("authsvc.pumping")

PHONE_CHANNELS = ("sms", "voice")
# The limit name an open breaker's refusal is counted under (metrics).
BREAKER_LIMIT = "send.breaker"


@dataclass(frozen=True)
class PhoneDestination:
    region: str
    prefix: str  # "+3361234", never the full number


def phone_destination(app: App, e164: str) -> PhoneDestination:
    number = phonenumbers.parse(e164, None)
    region = phonenumbers.region_code_for_number(number) or ""
    hidden = app.settings.pumping_prefix_hidden_digits
    return PhoneDestination(region, e164[: max(len(e164) - hidden, 3)])


def check_country(app: App, channel: str, region: str) -> None:
    allowed = app.settings.sms_countries if channel == "sms" else app.settings.voice_countries
    if region not in allowed:
        failure = failures.channel_not_available(channel)
        failure.message = f"codes are not sent by {channel} to this country"
        raise failure


async def breaker_generation(app: App, prefix: str, now: datetime) -> int:
    """Refuse a send to a prefix whose breaker is open; else the generation of its bucket."""
    breaker = await app.db.read(breakers.find, prefix)
    if breaker is None:
        return 0
    open_until, generation = breaker
    if open_until is not None and open_until > now:
        metrics.rate_limited(BREAKER_LIMIT)
        raise rate_limited("phone_prefix", (open_until - now).total_seconds())
    return generation


async def trip(app: App, prefix: str, now: datetime, channel: str) -> float:
    """Open the prefix's breaker; returns how long it stays open."""
    open_s = float(app.settings.breaker_open_s)
    until = now + timedelta(seconds=open_s)
    async with app.write() as db:
        tripped = await db.execute(
            update(SendBreaker)
            .where(SendBreaker.prefix == prefix)
            .values(tripped_at=now, open_until=until, trips=SendBreaker.trips + 1)
        )
        if tripped.rowcount == 0:  # type: ignore[attr-defined]
            db.add(
                SendBreaker(
                    prefix=prefix,
                    generation=0,
                    tripped_at=now,
                    open_until=until,
                    trips=1,
                    reset_at=None,
                )
            )
    metrics.breaker_tripped(channel)
    log.warning(
        "sms_pumping_breaker_tripped",
        prefix=prefix + "•" * app.settings.pumping_prefix_hidden_digits,
        open_until=until.isoformat(),
        reset="authsvc breaker reset " + prefix,
    )
    return open_s


async def trip_safely(app: App, prefix: str, now: datetime, channel: str) -> float:
    try:
        return await trip(app, prefix, now, channel)
    except IntegrityError:  # a concurrent send tripped it first
        return float(app.settings.breaker_open_s)


async def list_breakers(app: App, *, include_closed: bool = False) -> list[SendBreaker]:
    now = app.clock.now()
    async with app.read() as db:
        rows = list(await db.scalars(select(SendBreaker).order_by(SendBreaker.prefix)))
    return [
        row
        for row in rows
        if include_closed or (row.open_until is not None and row.open_until > now)
    ]


async def reset_breaker(app: App, prefix: str | None) -> int:
    """Close one prefix's breaker (or all, with None) and give it a fresh bucket."""
    now = app.clock.now()
    statement = update(SendBreaker).values(
        open_until=None, reset_at=now, generation=SendBreaker.generation + 1
    )
    if prefix is not None:
        statement = statement.where(SendBreaker.prefix == prefix)
    else:
        statement = statement.where(SendBreaker.open_until.is_not(None))
    async with app.write() as db:
        done = await db.execute(statement)
    count = int(done.rowcount)  # type: ignore[attr-defined]
    log.warning("sms_pumping_breaker_reset", prefix=prefix or "*", breakers=count)
    return count


async def check_send(
    app: App,
    *,
    channel: str,
    address: str,
    ip: str,
    organization_id: str,
    requester: str | None = None,
) -> None:
    """Everything a send must pass, cheapest first; raises the refusal."""
    now = app.clock.now()
    prefix: str | None = None
    destination = address.casefold()
    if channel in PHONE_CHANNELS:
        where = phone_destination(app, address)
        check_country(app, channel, where.region)
        generation = await breaker_generation(app, where.prefix, now)
        # An unverified destination's send does not count toward the breaker (see above).
        prefix = f"{where.prefix}#{generation}" if requester is None else None
    policy = app.limits
    verdict = await policy.send(
        now,
        ip=ip,
        destination=destination,
        prefix=prefix,
        organization_id=organization_id,
        requester=requester,
    )
    if verdict.allowed:
        return
    if verdict.limit is policy.send_prefix and prefix is not None:
        open_s = await trip_safely(app, prefix.partition("#")[0], now, channel)
        metrics.rate_limited(policy.send_prefix.name)
        raise rate_limited("phone_prefix", open_s)
    policy.refuse(verdict)

"""The consistency scan: what a half-written decision would leave behind, counted in SQL.

Every decision of the service is one transaction (one statement on PostgreSQL): a challenge and
its outbox message, a right code and its session, a step-up and its grant go in together or not
at all. A replica killed mid-call, a failover or a restore must therefore leave no row that
only part of a decision wrote. Each invariant below is one `SELECT count(*)` of the rows that
break it (the rows are not listed: they hold sealed data and digests, and an operator looks
them up by the invariant's description); `authsvc check-consistency` runs them all and exits
non-zero when any finds a row, and the load test's kill run ends with it.

Foreign keys already refuse some of these (a session of a missing account) while they are on;
the scan checks them anyway because a restore, a manual repair or SQLite with its pragma off
does not go through them.

The caps (attempts, sends per flow) are the current settings': run the scan with the settings
the rows were written under (lowering a cap makes older flows count as beyond it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authsvc.db import (
    Account,
    ActionGrant,
    Flow,
    FlowStatus,
    MessageStatus,
    OutboxMessage,
    Session,
)
from authsvc.db.statements import table

FLOWS = table(Flow)
MESSAGES = table(OutboxMessage)
SESSIONS = table(Session)
GRANTS = table(ActionGrant)
ACCOUNTS = table(Account)

PENDING = FlowStatus.PENDING.value
COMPLETED = FlowStatus.COMPLETED.value
# Statuses after which the dispatcher has dropped the sealed payload (destination and code).
FINISHED = tuple(
    s.value
    for s in (
        MessageStatus.SENT,
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED,
        MessageStatus.ABANDONED,
    )
)
SENT = tuple(
    s.value for s in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.UNDELIVERED)
)
# Statuses of a message still to be sent: it needs its payload.
UNSENT = tuple(s.value for s in (MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.FAILED))


@dataclass(frozen=True)
class Caps:
    """The settings an invariant compares with."""

    max_code_attempts: int
    max_sends_per_flow: int


@dataclass(frozen=True)
class Invariant:
    name: str
    says: str  # what a row counted here means
    offending: Callable[[Caps], ColumnElement[bool]]  # the WHERE of the rows breaking it
    table: str  # the table counted


@dataclass(frozen=True)
class Finding:
    invariant: Invariant
    count: int


def _message_of_challenge() -> ColumnElement[bool]:
    # One message per challenge, keyed by the challenge's id (flows/challenge.py).
    return exists().where(MESSAGES.c.id == FLOWS.c.challenge_id)


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "challenge_without_message",
        "a pending flow's current challenge has no outbox message: its code can never arrive",
        lambda _: and_(
            FLOWS.c.status == PENDING, FLOWS.c.challenge_id.is_not(None), ~_message_of_challenge()
        ),
        "flows",
    ),
    Invariant(
        "challenge_half_written",
        "a flow names a challenge without its code digest, expiry, channel or send count",
        lambda _: and_(
            FLOWS.c.status == PENDING,
            FLOWS.c.challenge_id.is_not(None),
            or_(
                FLOWS.c.code_digest.is_(None),
                FLOWS.c.code_expires_at.is_(None),
                FLOWS.c.channel.is_(None),
                FLOWS.c.last_sent_at.is_(None),
                FLOWS.c.send_count < 1,
            ),
        ),
        "flows",
    ),
    Invariant(
        "code_without_challenge",
        "a flow holds a code digest but no challenge (a code nobody can have been sent)",
        lambda _: and_(FLOWS.c.code_digest.is_not(None), FLOWS.c.challenge_id.is_(None)),
        "flows",
    ),
    Invariant(
        "flow_attempts_beyond_cap",
        "a flow counted more wrong codes than the cap, or reached it and is still pending",
        lambda caps: or_(
            FLOWS.c.failed_attempts > caps.max_code_attempts,
            and_(FLOWS.c.status == PENDING, FLOWS.c.failed_attempts >= caps.max_code_attempts),
        ),
        "flows",
    ),
    Invariant(
        "flow_sends_beyond_cap",
        "a flow sent more codes than the cap per flow",
        lambda caps: FLOWS.c.send_count > caps.max_sends_per_flow,
        "flows",
    ),
    Invariant(
        "completed_flow_holding_code",
        "a completed flow still holds its code digest, or has no completion time",
        lambda _: and_(
            FLOWS.c.status == COMPLETED,
            or_(FLOWS.c.code_digest.is_not(None), FLOWS.c.completed_at.is_(None)),
        ),
        "flows",
    ),
    Invariant(
        "flow_of_missing_account",
        "a flow belongs to no account",
        lambda _: ~exists().where(ACCOUNTS.c.id == FLOWS.c.account_id),
        "flows",
    ),
    Invariant(
        "message_of_missing_flow",
        "an outbox message names a flow that does not exist",
        lambda _: and_(
            MESSAGES.c.flow_id.is_not(None), ~exists().where(FLOWS.c.id == MESSAGES.c.flow_id)
        ),
        "outbox_messages",
    ),
    Invariant(
        "finished_message_holding_code",
        "a sent, delivered or abandoned message still holds its sealed payload (the code)",
        lambda _: and_(MESSAGES.c.status.in_(FINISHED), MESSAGES.c.payload_sealed.is_not(None)),
        "outbox_messages",
    ),
    Invariant(
        "unsent_message_without_payload",
        "a queued, sending or failed message has no payload: it can never be sent",
        lambda _: and_(MESSAGES.c.status.in_(UNSENT), MESSAGES.c.payload_sealed.is_(None)),
        "outbox_messages",
    ),
    Invariant(
        "sending_message_without_lease",
        "a message is being sent under no lease: no other dispatcher would ever take it over",
        lambda _: and_(
            MESSAGES.c.status == MessageStatus.SENDING.value, MESSAGES.c.lease_until.is_(None)
        ),
        "outbox_messages",
    ),
    Invariant(
        "sent_message_without_time",
        "a message is marked sent (or has a receipt) without the time it was sent",
        lambda _: and_(MESSAGES.c.status.in_(SENT), MESSAGES.c.sent_at.is_(None)),
        "outbox_messages",
    ),
    Invariant(
        "session_of_missing_account",
        "a session belongs to no account (the account was deleted under it)",
        lambda _: ~exists().where(ACCOUNTS.c.id == SESSIONS.c.account_id),
        "sessions",
    ),
    Invariant(
        "grant_without_completed_flow",
        "an action grant whose step-up flow is missing or was never completed",
        lambda _: ~exists().where(FLOWS.c.id == GRANTS.c.flow_id, FLOWS.c.status == COMPLETED),
        "action_grants",
    ),
    Invariant(
        "grant_not_of_its_flow",
        "an action grant for another account than its flow's, or bound to a missing session",
        lambda _: or_(
            exists().where(
                FLOWS.c.id == GRANTS.c.flow_id, FLOWS.c.account_id != GRANTS.c.account_id
            ),
            ~exists().where(SESSIONS.c.id == GRANTS.c.session_id),
        ),
        "action_grants",
    ),
)

_TABLES = {
    "flows": FLOWS,
    "outbox_messages": MESSAGES,
    "sessions": SESSIONS,
    "action_grants": GRANTS,
}


def count_statement(invariant: Invariant, caps: Caps) -> Select[Any]:
    """One statement: how many rows of the invariant's table break it."""
    return (
        select(func.count()).select_from(_TABLES[invariant.table]).where(invariant.offending(caps))
    )


async def scan(engine: AsyncEngine, caps: Caps) -> list[Finding]:
    """Every invariant's count, in the order above, in one read-only connection."""
    async with engine.connect() as connection:
        return await scan_on(connection, caps)


async def scan_on(connection: AsyncConnection, caps: Caps) -> list[Finding]:
    """The same on a connection the caller holds (in its transaction: the tests' seeds)."""
    findings = []
    for invariant in INVARIANTS:
        count = (await connection.execute(count_statement(invariant, caps))).scalar_one()
        findings.append(Finding(invariant, int(count)))
    return findings


def violations(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.count]

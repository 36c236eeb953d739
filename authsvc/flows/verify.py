"""Verify: check the code of a flow's active challenge.

The code is compared in constant time (CodeHasher.verify) against the keyed digest of the
current challenge. The outcome is then written by ONE conditional UPDATE, which is what makes
the check atomic under concurrency:
- a right code completes the flow only WHERE it is still pending, on the same challenge, with
  attempts left and the code unexpired; of many concurrent right answers exactly one wins;
- a wrong code adds one attempt only WHERE fewer than the maximum were counted, and the same
  statement kills the flow at the maximum; so concurrent guesses never get more than the
  maximum checks.
The session and device trust are written in the winner's transaction: on a login flow, the
whole outcome is one decision of authsvc/db/statements/codes.py (right code or wrong, one
statement on PostgreSQL); a step-up, contact or federated flow completes in an ORM transaction,
where its grant, contact or link is written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, metrics, sessions, validation
from authsvc.app import App
from authsvc.courier import notices
from authsvc.db import AuditEvent, Flow, FlowPurpose, FlowStatus
from authsvc.db.statements import claims, codes, factors
from authsvc.db.statements.flows import AccountRow, FlowRow
from authsvc.errors import Failure
from authsvc.flows import contact, failures, federated, grants, totp
from authsvc.flows.challenge import ensure_open, load_flow
from authsvc.flows.contact import ContactVerified
from authsvc.flows.login import ClientInfo
from authsvc.flows.views import LoginVerified
from authsvc.policies import cadence, lockout


@dataclass(frozen=True)
class VerifyRequest:
    flow_id: uuid.UUID
    code: str
    client: ClientInfo


async def verify(
    app: App, request: VerifyRequest
) -> LoginVerified | grants.IssuedGrant | ContactVerified | federated.FederatedLinkResult:
    flow, account = await load_flow(app, request.flow_id)
    now = app.clock.now()
    ensure_open(flow, now)
    by_app = flow.channel == "totp"  # the code is the authenticator app's
    # A sent code kept by a switch to the app or a passkey (flows.open_factor_window) still
    # answers; a passkey window without one takes no code here (PasskeyService answers it).
    sent = flow.code_digest
    if flow.challenge_id is None or flow.code_expires_at is None or (sent is None and not by_app):
        raise failures.no_active_challenge()
    if flow.code_expires_at <= now:
        raise failures.code_expired()
    # A code of a length no current factor takes is bad input, not a wrong code (nothing
    # counted): the API took both lengths (a sent code's setting, the app's 6).
    lengths = ((app.settings.code_digits,) if sent is not None else ()) + (
        (totp.DIGITS,) if by_app else ()
    )
    validation.code(request.code, *lengths)
    # Limits, then the second factor's lock: before the code is even compared.
    await app.limits.verify(now, ip=request.client.ip_address, account_id=str(account.id))
    lockout.check_code_lock(app, account, now)
    # Both compared when both apply, the sent code's digest first (in memory; the app's match
    # reads its factor and unseals its secret): one answer, whichever it was.
    claim: factors.StepClaim | None = None
    matches = sent is not None and app.keys.code_hasher.verify(
        request.code, flow.challenge_id.bytes, sent
    )
    if not matches and by_app:
        claim = await totp.match(app, account.id, request.code, now)
        matches = claim is not None
    if not matches:
        raise await _wrong_code(app, flow, account, now)
    if flow.purpose == FlowPurpose.LOGIN:
        return await _complete_login(
            app, flow, flow.challenge_id, account, request.client, now, claim
        )
    return await _complete_on_session(app, flow, flow.challenge_id, account, now, claim)


async def _complete_login(
    app: App,
    flow: FlowRow,
    challenge_id: uuid.UUID,
    account: AccountRow,
    client: ClientInfo,
    now: datetime,
    claim: claims.Claim | None,
    *,
    count_lost_claim: bool = True,
) -> LoginVerified:
    """A right code on a login flow: the session, the device's trust, the phone verified and
    every counter reset, in one decision (one statement on PostgreSQL). An app's code adds the
    claim of its time step: one transaction then (the claim refused undoes it all)."""
    issued, session = sessions.new(
        app,
        account.id,
        last_code_time=now,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    trust, device = cadence.new_trust(app, account.id, client.user_agent)
    verified = audit.with_details(
        audit.event(
            app.clock,
            "code.verified",
            organization_id=account.organization_id,
            actor=account.id,
            flow_id=str(flow.id),
            purpose=str(flow.purpose),
        ),
        **_by_app(claim),
    )
    right = codes.RightCode(
        flow_id=flow.id,
        challenge_id=challenge_id,
        account_id=account.id,
        now=now,
        rules=lockout.code_rules(app),
        session=session,
        device=device,
        verified=verified,
        claim=claim,
    )
    try:
        # One statement on PostgreSQL; with a step to claim, one transaction.
        decide = app.db.statement if claim is None else app.db.write
        await decide(codes.complete_login, right)
    except codes.Refused as refused:
        if refused.why == "replayed":
            if not count_lost_claim:
                raise ClaimLost from None
            raise await _wrong_code(app, flow, account, now, replayed=True) from None
        raise await _refused(app, flow.id, refused.why, superseded=challenge_id) from None
    return LoginVerified(issued, trust.token, trust.expires_at)


def _by_app(claim: claims.Claim | None) -> dict[str, str]:
    """The audit details that say the answer was an authenticator app's or a passkey's
    (which one)."""
    return claims.audit_details(claim)


async def _wrong_code(
    app: App,
    flow: FlowRow,
    account: AccountRow,
    now: datetime,
    *,
    replayed: bool = False,
    outcome: str | None = None,
) -> Failure:
    """Count a wrong code (on the flow and on the account, in one decision) and say so. An
    app's code whose step was already accepted (`replayed`) is a wrong code like any other:
    whoever saw it used cannot try it elsewhere for free."""
    by_app = {"channel": flow.channel} if flow.channel in _FACTOR_CHANNELS else {}
    outcome = outcome or ("CODE_REPLAYED" if replayed else "CODE_MISMATCH")
    failed = audit.with_details(
        audit.event(
            app.clock,
            "code.failed",
            outcome=outcome,
            organization_id=account.organization_id,
            actor=account.id,
            flow_id=str(flow.id),
            purpose=str(flow.purpose),
            attempts=codes.COUNTED_ATTEMPTS,
            consecutive=codes.COUNTED_CONSECUTIVE,
        ),
        **by_app,
    )
    wrong = codes.WrongCode(
        flow_id=flow.id,
        account_id=account.id,
        now=now,
        rules=lockout.code_rules(app),
        failed=failed,
        locked_outcome="ACCOUNT_LOCKED",
        # The password is known to whoever types these codes: a lock tells the holder.
        lock_notice=notices.notice(app, account, "code_failures"),
        # A wrong code after a right first factor: the holder hears of it (once a day).
        wrong_codes_notice=(
            notices.notice(app, account, "wrong_codes")
            if flow.purpose == FlowPurpose.LOGIN
            else None
        ),
    )
    try:
        counted = await app.db.statement(codes.count_wrong_code, wrong)
    except codes.Refused as refused:
        return await _refused(app, flow.id, refused.why, superseded=None)
    if counted.notified:
        app.outbox_ready.set()
    if counted.locked:
        metrics.lockout("code")
        return await _locked(app, flow.id)
    return failures.code_mismatch(max(app.settings.max_code_attempts - counted.attempts, 0))


async def _complete_on_session(
    app: App,
    read: FlowRow,
    challenge_id: uuid.UUID,
    account: AccountRow,
    now: datetime,
    claim: claims.Claim | None,
    *,
    count_lost_claim: bool = True,
) -> grants.IssuedGrant | ContactVerified | federated.FederatedLinkResult:
    """A right code on a step-up, contact or federated flow: its completion runs in the
    winner's ORM transaction (grants, contacts and links are written there), with the same
    order of locks: the account's row, then the flow's."""
    max_attempts = app.settings.max_code_attempts
    flow_id, full = read.id, read.purpose in _FULL_SUCCESS
    try:
        async with app.write() as db:
            if not await lockout.claim_code_success(app, db, account.id, now, full=full):
                raise codes.Refused("locked")
            won = await db.execute(
                update(Flow)
                .where(
                    Flow.id == flow_id,
                    Flow.status == FlowStatus.PENDING,
                    Flow.challenge_id == challenge_id,
                    Flow.failed_attempts < max_attempts,
                    Flow.code_expires_at > now,
                    Flow.expires_at > now,
                )
                .values(status=FlowStatus.COMPLETED, completed_at=now, code_digest=None)
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                raise codes.Refused("closed")  # undo the counters' reset too
            # An app's code: its step claimed last (locks: account, flow, factor).
            if claim is not None:
                claimed = await db.execute(*claims.statement(claim))
                if claimed.first() is None:
                    raise codes.Refused("replayed")  # undo the flow's completion too
            flow = await db.get_one(Flow, flow_id)
            verified = audit.event(
                app.clock,
                "code.verified",
                organization_id=account.organization_id,
                actor=account.id,
                flow_id=str(flow.id),
                purpose=str(flow.purpose),
            )
            db.add(AuditEvent(**audit.with_details(verified, **_by_app(claim))))
            return await _complete(app, db, flow, account)
    except codes.Refused as refused:
        if refused.why == "replayed":
            if not count_lost_claim:
                raise ClaimLost from None
            raise await _wrong_code(app, read, account, now, replayed=True) from None
        raise await _refused(app, flow_id, refused.why, superseded=challenge_id) from None


class ClaimLost(Exception):
    """complete_by_factor: the factor's claim lost (its counter did not move forward when the
    completion stored it), the completion undone whole, nothing counted: the factor decides
    what that means (a passkey: a clone)."""


# Channels answered by a factor other than the phone: their failures' audit rows say which.
_FACTOR_CHANNELS = ("totp", "passkey")


async def complete_by_factor(
    app: App,
    flow: FlowRow,
    account: AccountRow,
    client: ClientInfo,
    now: datetime,
    claim: claims.Claim,
) -> LoginVerified | grants.IssuedGrant | ContactVerified | federated.FederatedLinkResult:
    """Complete the flow's current challenge as a right code does (the same decisions: a
    session and device trust for a login, a grant for a step-up), for a factor that checked
    its own answer (a passkey's assertion) and claims `claim` in the completion's transaction.
    The caller checked the flow open, its challenge current and the factor unlocked. Raises
    ClaimLost when the claim is refused (nothing written, nothing counted)."""
    assert flow.challenge_id is not None
    if flow.purpose == FlowPurpose.LOGIN:
        return await _complete_login(
            app, flow, flow.challenge_id, account, client, now, claim, count_lost_claim=False
        )
    return await _complete_on_session(
        app, flow, flow.challenge_id, account, now, claim, count_lost_claim=False
    )


async def count_failed_answer(
    app: App, flow: FlowRow, account: AccountRow, now: datetime, *, outcome: str
) -> Failure:
    """Count a factor's wrong answer exactly as a wrong code (the flow's attempts, the
    account's consecutive count and lock); `outcome` goes into the audit row."""
    return await _wrong_code(app, flow, account, now, outcome=outcome)


# A right code for these purposes ends in a session or a grant: every counter starts again.
_FULL_SUCCESS = (FlowPurpose.LOGIN, FlowPurpose.STEP_UP)


async def _locked(app: App, flow_id: uuid.UUID) -> Failure:
    _, account = await load_flow(app, flow_id)
    try:
        lockout.check_code_lock(app, account, app.clock.now())
    except Failure as failure:
        return failure
    return lockout.account_locked(0.0)


async def _complete(
    app: App, db: AsyncSession, flow: Flow, account: AccountRow
) -> grants.IssuedGrant | ContactVerified | federated.FederatedLinkResult:
    """What a right code gives, by the flow's purpose; in the winner's transaction."""
    if flow.purpose == FlowPurpose.STEP_UP:
        grant = grants.issue(app, db, flow)
        audit.record(
            db,
            app.clock,
            "grant.issued",
            organization_id=account.organization_id,
            actor=account.id,
            target=flow.target_account_id,
            action=str(flow.action),
        )
        return grant
    if flow.purpose == FlowPurpose.CONTACT_VERIFICATION:
        return await contact.apply(app, db, flow)
    assert flow.purpose in (FlowPurpose.FEDERATED_LINK, FlowPurpose.FEDERATED_UNLINK)
    return await federated.apply(app, db, flow)


async def _refused(
    app: App, flow_id: uuid.UUID, why: str, *, superseded: uuid.UUID | None
) -> Failure:
    """The answer when a decision changed nothing: the factor's lock, or what the flow is now
    (another answer won, or a new code replaced this one)."""
    if why == "locked":
        return await _locked(app, flow_id)
    return await _why_closed(app, flow_id, superseded=superseded)


async def _why_closed(app: App, flow_id: uuid.UUID, *, superseded: uuid.UUID | None) -> Failure:
    flow, _ = await load_flow(app, flow_id)
    now = app.clock.now()
    ensure_open(flow, now)
    if superseded is not None and (
        flow.challenge_id != superseded
        or flow.code_expires_at is None
        or flow.code_expires_at <= now
    ):
        return failures.code_expired()  # a newer code replaced this one, or it just expired
    return failures.flow_failed()

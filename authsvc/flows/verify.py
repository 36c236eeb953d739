"""Verify: check the code of a flow's active challenge.

The code is compared in constant time (CodeHasher.verify) against the keyed digest of the
current challenge. The outcome is then written by ONE conditional UPDATE, which is what makes
the check atomic under concurrency:
- a right code completes the flow only WHERE it is still pending, on the same challenge, with
  attempts left and the code unexpired; of many concurrent right answers exactly one wins;
- a wrong code adds one attempt only WHERE fewer than the maximum were counted, and the same
  statement kills the flow at the maximum; so concurrent guesses never get more than the
  maximum checks.
The session and device trust are written in the winner's transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import case, update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit, sessions
from authsvc.app import App
from authsvc.db import Account, Flow, FlowPurpose, FlowStatus
from authsvc.errors import Failure
from authsvc.flows import contact, failures, federated, grants
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
    if flow.challenge_id is None or flow.code_digest is None or flow.code_expires_at is None:
        raise failures.no_active_challenge()
    if flow.code_expires_at <= now:
        raise failures.code_expired()
    # Limits, then the second factor's lock: before the code is even compared.
    await app.limits.verify(now, ip=request.client.ip_address, account_id=str(account.id))
    lockout.check_code_lock(app, account, now)
    max_attempts = app.settings.max_code_attempts
    matches = app.keys.code_hasher.verify(request.code, flow.challenge_id.bytes, flow.code_digest)

    # Both paths lock the account row first, then the flow row (one order: no deadlock); the
    # account's UPDATE re-checks the second factor's lock, so no answer is given once a
    # concurrent failure locked it.
    if matches:
        try:
            async with app.write() as db:
                full = flow.purpose in _FULL_SUCCESS
                if not await lockout.claim_code_success(app, db, account.id, now, full=full):
                    raise _Abort("locked")
                won = await db.execute(
                    update(Flow)
                    .where(
                        Flow.id == flow.id,
                        Flow.status == FlowStatus.PENDING,
                        Flow.challenge_id == flow.challenge_id,
                        Flow.failed_attempts < max_attempts,
                        Flow.code_expires_at > now,
                        Flow.expires_at > now,
                    )
                    .values(status=FlowStatus.COMPLETED, completed_at=now, code_digest=None)
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    raise _Abort("closed")  # undo the counters' reset too
                audit.record(
                    db,
                    app.clock,
                    "code.verified",
                    organization_id=account.organization_id,
                    actor=account.id,
                    flow_id=str(flow.id),
                    purpose=str(flow.purpose),
                )
                return await _complete(app, db, flow, account, request.client)
        except _Abort as abort:
            if abort.why == "locked":
                raise await _locked(app, flow.id) from None
        # Lost the race (or a new code replaced this one): say what the flow is now.
        raise await _why_closed(app, flow.id, superseded=flow.challenge_id)

    try:
        async with app.write() as db:
            counted_for_account = await lockout.code_failure(app, db, account.id, now)
            if counted_for_account is None:
                raise _Abort("locked")
            counted = await db.execute(
                update(Flow)
                .where(
                    Flow.id == flow.id,
                    Flow.status == FlowStatus.PENDING,
                    Flow.failed_attempts < max_attempts,
                )
                .values(
                    failed_attempts=Flow.failed_attempts + 1,
                    status=case(
                        (Flow.failed_attempts + 1 >= max_attempts, FlowStatus.FAILED.value),
                        else_=Flow.status,
                    ),
                )
                .returning(Flow.failed_attempts)
            )
            attempts = counted.scalar_one_or_none()
            if attempts is None:
                raise _Abort("closed")  # nothing counted on the account either
            consecutive, locked_now = counted_for_account
            audit.record(
                db,
                app.clock,
                "code.failed",
                outcome="ACCOUNT_LOCKED" if locked_now else "CODE_MISMATCH",
                organization_id=account.organization_id,
                actor=account.id,
                flow_id=str(flow.id),
                purpose=str(flow.purpose),
                attempts=str(attempts),
                consecutive=str(consecutive),
            )
            notified = locked_now
            if locked_now:
                # The password is known to whoever types these codes: tell the holder.
                lockout.notify_code_lock(app, db, account)
            elif flow.purpose == FlowPurpose.LOGIN:
                # A wrong code after a right first factor: the holder hears of it (once a day).
                notified = await lockout.notify_wrong_codes(app, db, account, now)
    except _Abort as abort:
        if abort.why == "locked":
            raise await _locked(app, flow.id) from None
        raise await _why_closed(app, flow.id, superseded=None) from None
    if notified:
        app.outbox_ready.set()
    if locked_now:
        raise await _locked(app, flow.id)
    raise failures.code_mismatch(max(max_attempts - attempts, 0))


# A right code for these purposes ends in a session or a grant: every counter starts again.
_FULL_SUCCESS = (FlowPurpose.LOGIN, FlowPurpose.STEP_UP)


class _Abort(Exception):
    """Leave a verification's transaction, rolled back whole."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def _locked(app: App, flow_id: uuid.UUID) -> Failure:
    _, account = await load_flow(app, flow_id)
    try:
        lockout.check_code_lock(app, account, app.clock.now())
    except Failure as failure:
        return failure
    return lockout.account_locked(0.0)


async def _complete(
    app: App, db: AsyncSession, flow: Flow, account: Account, client: ClientInfo
) -> LoginVerified | grants.IssuedGrant | ContactVerified | federated.FederatedLinkResult:
    """What a right code gives, by the flow's purpose; in the winner's transaction."""
    now = app.clock.now()
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
    if flow.purpose in (FlowPurpose.FEDERATED_LINK, FlowPurpose.FEDERATED_UNLINK):
        return await federated.apply(app, db, flow)
    # A login: the code reached the phone, which is therefore verified.
    await db.execute(update(Account).where(Account.id == account.id).values(phone_verified_at=now))
    trust = cadence.trust_device(app, db, account.id, client.user_agent)
    session = await sessions.issue(
        app,
        db,
        account.id,
        last_code_time=now,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    return LoginVerified(session, trust.token, trust.expires_at)


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

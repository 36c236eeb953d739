"""A passkey as the second factor of a login or step-up flow.

BeginPasskeyAssertion makes a passkey challenge the flow's current one (as a TOTP Challenge
does: nothing is sent, the attempt window opens, the flow's attempts are not reset) and keeps
the WebAuthn challenge under the flow's challenge id. FinishPasskeyAssertion checks, in this
order: the flow open with that challenge current, the limits and the factor's lock (as Verify),
the ceremony taken once (one conditional DELETE), the assertion (py_webauthn: signature,
challenge, origin, rp id, user verification), the counter. Every refused assertion counts as
a wrong code, but a clone's (below: its flow fails instead). A right one completes the flow
through Verify's own completion (flows/verify.py), the counter claimed in its transaction: a
concurrent assertion that stored the same or a later counter first undoes it.

A counter that does not move forward (read before the claim, or the claim losing) means two
copies of the private key: a clone. It is refused and, in ONE transaction (`_disable_clone`),
the credential is disabled (it answers no flow any more; ListFactors shows it disabled until
its holder removes it), the trust that may rest on the copy ends (accounts/revocation.end_trust:
the security epoch, every pending flow of the account, this one included, its trusted devices
and ALL its sessions, since any of them may have been opened with the copy), the holder is told
by email and the detection audited. Counting it as a wrong code would add nothing: the flow
is failed and the passkey answers no other. Only whoever holds the private key can trigger
this: the
signature over this ceremony's challenge was verified with the stored public key first, so a
stranger cannot disable someone's passkey or end their sessions this way.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.accounts import revocation
from authsvc.accounts.passkeys import KIND, ceremony_invalid, malformed, rejected
from authsvc.app import App
from authsvc.courier.notices import notify
from authsvc.db import FlowPurpose
from authsvc.db.statements import flows, passkeys
from authsvc.db.statements.flows import AccountRow, FlowRow
from authsvc.errors import Failure
from authsvc.flows import failures, federated, grants, verify, webauthn_rp
from authsvc.flows.challenge import ensure_open, load_flow
from authsvc.flows.contact import ContactVerified
from authsvc.flows.login import ClientInfo
from authsvc.flows.views import LoginVerified
from authsvc.policies import lockout

CHANNEL = "passkey"
# Every flow that takes the account's second factors (a contact being verified proves that
# contact, by its own channel).
_PURPOSES = (
    FlowPurpose.LOGIN,
    FlowPurpose.STEP_UP,
    FlowPurpose.FEDERATED_LINK,
    FlowPurpose.FEDERATED_UNLINK,
)


def cloned() -> Failure:
    """No attempts_remaining: the flow failed with the trust the copy may have earned."""
    return Failure(
        "PERMISSION_DENIED",
        "PASSKEY_CLONED",
        "this passkey's signature counter went back: a copy of it exists; the passkey is "
        "disabled and the account's sessions ended",
    )


async def begin(app: App, flow_id: uuid.UUID, *, ip_address: str | None = None) -> str:
    """The request options (JSON) for the flow's account's passkeys. `ip_address`: the end
    user's, when the backend gave it (the window's per-network limit)."""
    webauthn_rp.require_configured(app.settings)
    flow, account = await load_flow(app, flow_id)
    now = app.clock.now()
    ensure_open(flow, now)
    if flow.purpose not in _PURPOSES:
        raise failures.channel_not_available(CHANNEL)
    # The window writes the flow, a ceremony and an audit row: its own limits, as the app's.
    await app.limits.factor_window(now, flow_id=str(flow.id), ip=ip_address)
    lockout.check_code_lock(app, account, now)
    stored = await app.db.read(passkeys.of_account, account.id)
    if not stored:
        raise failures.channel_not_available(CHANNEL)
    # The options are drawn first (their challenge is kept with the ceremony); the window
    # they open may end sooner than `ttl_s` when a sent code is still valid (it keeps that
    # code's expiry): the ceremony then expires with it, and the browser's own timeout is
    # only a hint.
    ttl_s = app.settings.code_ttl_s
    options = webauthn_rp.assertion_options(
        app.settings,
        allow=[(one.credential_id, one.transports) for one in stored],
        timeout_s=ttl_s,
    )
    window = flows.FactorWindow(
        flow_id=flow.id,
        now=now,
        channel=CHANNEL,
        challenge_id=uuid.uuid4(),
        code_expires_at=now + timedelta(seconds=ttl_s),
        started=audit.event(
            app.clock,
            "passkey.challenged",
            organization_id=account.organization_id,
            actor=account.id,
            flow_id=str(flow.id),
            purpose=str(flow.purpose),
            channel=CHANNEL,
        ),
    )
    ceremony = passkeys.Ceremony(
        id=window.challenge_id,  # the window's, as written
        account_id=account.id,
        flow_id=flow.id,
        kind=passkeys.ASSERTION,
        challenge=options.challenge,
        created_at=now,
        expires_at=window.code_expires_at,  # the window's, as written
    )
    if await app.db.write(passkeys.start_assertion, window, ceremony) is None:
        flow, _ = await load_flow(app, flow_id)
        ensure_open(flow, app.clock.now())
        raise failures.flow_failed()  # closed between the read and the write
    return options.json


async def finish(
    app: App, flow_id: uuid.UUID, credential_json: str, client: ClientInfo
) -> LoginVerified | grants.IssuedGrant | federated.FederatedLinkResult:
    webauthn_rp.require_configured(app.settings)
    try:
        credential = webauthn_rp.parse_assertion(credential_json)
    except webauthn_rp.Malformed as error:
        raise malformed(error) from None
    flow, account = await load_flow(app, flow_id)
    now = app.clock.now()
    ensure_open(flow, now)
    if flow.channel != CHANNEL or flow.challenge_id is None or flow.code_expires_at is None:
        raise failures.no_active_challenge()
    if flow.code_expires_at <= now:
        raise failures.code_expired()
    await app.limits.verify(now, ip=client.ip_address, account_id=str(account.id))
    lockout.check_code_lock(app, account, now)
    taken = passkeys.Consume(flow.challenge_id, account.id, flow.id, now)
    challenge = await app.db.write(passkeys.consume, taken)
    if challenge is None:
        raise ceremony_invalid()  # answered already (a replay) or replaced
    stored = await app.db.read(passkeys.find, account.id, credential.raw_id)
    if stored is None:
        raise await _refused(app, flow, account, now, "PASSKEY_UNKNOWN")
    try:
        sign_count = webauthn_rp.check_assertion(
            app.settings, credential, challenge, stored.public_key
        )
    except webauthn_rp.Malformed as error:
        raise malformed(error) from None
    except webauthn_rp.Rejected:
        raise await _refused(app, flow, account, now, "PASSKEY_REJECTED") from None
    if not webauthn_rp.counter_moves_forward(stored.sign_count, sign_count):
        raise await _disable_clone(app, flow, account, stored, sign_count)
    claim = passkeys.CounterClaim(stored.id, sign_count, now)
    try:
        result = await verify.complete_by_factor(app, flow, account, client, now, claim)
    except verify.ClaimLost:
        # A concurrent assertion stored the same or a later counter first (or disabled the
        # credential): a clone as well; the completion was undone whole.
        raise await _disable_clone(app, flow, account, stored, sign_count) from None
    assert not isinstance(result, ContactVerified)  # _PURPOSES
    return result


async def _disable_clone(
    app: App, flow: FlowRow, account: AccountRow, stored: passkeys.StoredCredential, new: int
) -> Failure:
    """A verified assertion whose counter did not move forward (module docstring): disable
    the credential, end the account's trust, tell the holder, audit; once (a later detection
    on the disabled credential only adds its audit row). The answer: PASSKEY_CLONED."""
    now = app.clock.now()
    async with app.write() as db:
        # The account's row first, as every completion locks it (then the flow, then the
        # credential): the two cannot deadlock on PostgreSQL.
        await db.execute(passkeys.LOCK_ACCOUNT, {"p_account_id": account.id})
        name = (
            await db.execute(passkeys.DISABLE, passkeys.disable_params(stored.id, now))
        ).scalar()
        audit.record(
            db,
            app.clock,
            "passkey.clone_detected",
            outcome="PASSKEY_CLONED",
            organization_id=account.organization_id,
            actor=account.id,
            target=account.id,
            factor_id=str(stored.id),
            flow_id=str(flow.id),
            stored_sign_count=str(stored.sign_count),
            sign_count=str(new),
            disabled="now" if name is not None else "already",
        )
        if name is not None:
            ended = await revocation.end_trust(db, account.id, now)
            await _disable_what_the_copy_may_have_added(app, db, account, now)
            # The passkey's name only: nothing of the credential (none of it is secret
            # anyway, but the mail need not say more than which one).
            notify(app, db, account, "passkey_cloned", factor_name=name)
            audit.record(
                db,
                app.clock,
                "factor.disabled",
                outcome="PASSKEY_CLONED",
                organization_id=account.organization_id,
                actor=account.id,
                target=account.id,
                kind=KIND,
                factor_id=str(stored.id),
                sessions_revoked=str(ended.sessions),
                devices_revoked=str(ended.devices),
                flows_failed=str(ended.flows),
            )
    if name is not None:
        app.outbox_ready.set()
    return cloned()


async def _disable_what_the_copy_may_have_added(
    app: App, db: AsyncSession, account: AccountRow, now: datetime
) -> None:
    """Whoever held the copy could step up with it and add a passkey or an app of their own,
    which would outlive the copy's detection (attack review: they logged straight back in):
    the account's other passkeys are disabled and its apps removed, each audited; the phone
    stays the rule, and the holder adds back theirs with a code by SMS."""
    params = {"p_account_id": account.id, "p_now": now}
    for factor_id in (await db.execute(passkeys.DISABLE_THE_OTHERS, params)).scalars():
        _audit_with_the_clone(app, db, account, "factor.disabled", KIND, factor_id)
    for factor_id in (await db.execute(passkeys.REMOVE_THE_APPS, params)).scalars():
        _audit_with_the_clone(app, db, account, "factor.removed", "totp", factor_id)


def _audit_with_the_clone(
    app: App, db: AsyncSession, account: AccountRow, event: str, kind: str, factor_id: object
) -> None:
    audit.record(
        db,
        app.clock,
        event,
        outcome="PASSKEY_CLONED",
        organization_id=account.organization_id,
        actor=account.id,
        target=account.id,
        kind=kind,
        factor_id=str(factor_id),
        reason="with_the_clone",
    )


async def _refused(
    app: App, flow: FlowRow, account: AccountRow, now: datetime, outcome: str
) -> Failure:
    """Count the refused assertion as a wrong code; the answer says the passkey's reason,
    unless the count itself locked the factor or ended the flow."""
    failure = await verify.count_failed_answer(app, flow, account, now, outcome=outcome)
    if failure.reason != "CODE_MISMATCH":
        return failure
    return rejected(failure.metadata)

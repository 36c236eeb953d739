"""Federated login (Net-entreprises) and the linking of federated identities.

The assertion replaces the password as the first factor; everything after it is the same
cadence (first login and every 7 days: a code). An identity is linked to an account only by its
holder: in their own session, with a fresh assertion of that identity carrying the
organisation's SIRET, and a code. An administrator may only propose a link (the holder is told).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.accounts import revocation
from authsvc.app import App
from authsvc.courier.notices import notify
from authsvc.db import (
    Account,
    FederatedIdentity,
    Flow,
    FlowPurpose,
    Organization,
    Role,
    Session,
)
from authsvc.db.statements import factors
from authsvc.errors import Failure, invalid_field
from authsvc.federation.assertions import AssertionVerifier, Claims
from authsvc.federation.failures import (
    identity_already_linked,
    identity_not_linked,
    refused,
    siret_mismatch,
)
from authsvc.flows import destination
from authsvc.flows.login import ClientInfo, after_first_factor, open_flow, pending_view
from authsvc.flows.stepup import load_accounts
from authsvc.flows.views import IssuedSession, PendingFlowView
from authsvc.policies.permissions import denied, require_admin
from authsvc.sessions import SessionInfo


@dataclass(frozen=True)
class FederatedLinkResult:
    account_id: uuid.UUID
    issuer: str
    linked: bool


async def _verified(app: App, verifier: AssertionVerifier, assertion: str, event: str) -> Claims:
    """Verify and consume an assertion; a refusal is recorded in the audit trail."""
    try:
        claims = await verifier.verify(assertion)
        await verifier.consume(claims)
    except Failure as failure:
        async with app.write() as db:
            audit.record(db, app.clock, event, outcome=failure.reason, organization_id=None)
        raise
    return claims


async def login_with_assertion(
    app: App,
    verifier: AssertionVerifier,
    *,
    assertion: str,
    siret: str | None,
    login: str | None,
    device_token: str | None,
    client: ClientInfo,
) -> IssuedSession | PendingFlowView:
    # Before verification the claims are the forger's choice: only the client's network.
    await app.limits.federated_attempt(app.clock.now(), ip=client.ip_address)
    claims = await _verified(app, verifier, assertion, "login.federated")
    # Verified: the subject's, the organisation's and the global login budgets.
    await app.limits.login_verified(
        app.clock.now(), siret=claims.siret, federated=(claims.issuer, claims.subject)
    )
    async with app.read() as db:
        row = (
            await db.execute(
                select(Account, Organization.siret, *factors.other_factors(Account.id))
                .join(FederatedIdentity, FederatedIdentity.account_id == Account.id)
                .join(Organization, Account.organization_id == Organization.id)
                .where(
                    FederatedIdentity.issuer == claims.issuer,
                    FederatedIdentity.subject == claims.subject,
                )
            )
        ).one_or_none()
    failure: Failure | None = None
    if row is None:
        failure = identity_not_linked()
    elif (
        row[1] != claims.siret
        or (siret is not None and siret != claims.siret)
        or (login is not None and login != row[0].login)
    ):
        failure = siret_mismatch()
    if failure is not None:
        async with app.write() as db:
            audit.record(
                db,
                app.clock,
                "login.federated",
                outcome=failure.reason,
                # Never in the linked account's trail: the one refused may be a person of
                # another organisation, and their address is none of that trail's business.
                organization_id=None,
                issuer=claims.issuer,
            )
        raise failure
    assert row is not None
    others = destination.OtherFactors(has_totp=bool(row[2]), has_passkey=bool(row[3]))
    return await after_first_factor(app, row[0], others, device_token, client, method="federated")


async def request_link(
    app: App,
    verifier: AssertionVerifier,
    caller: SessionInfo,
    *,
    target_id: uuid.UUID | None,
    assertion: str | None,
    issuer: str | None,
    subject: str | None,
    client: ClientInfo,
) -> PendingFlowView | None:
    """The holder's own link opens a code flow; an administrator's nomination only proposes.

    Nobody but the holder may attach a credential that signs in as them. A code is no proof of
    that when the administrator can change the holder's phone first, so a named subject links
    nothing: the holder is told by email and links the identity from their own session with an
    assertion of it carrying the organisation's SIRET. The nomination keeps no state, so it can
    neither be used to log in nor block the subject's real owner from linking it.
    """
    account, target = await load_accounts(app, caller.account_id, target_id)
    own = target is None or target.id == account.id
    linked = account if own else target
    assert linked is not None
    if not own:
        require_admin(caller.role)
        if linked.organization_id != account.organization_id:
            raise denied("no such account in your organisation")
    if assertion is None:
        await _propose(app, account, linked, issuer, subject, verifier, caller)
        return None
    if not own:
        raise invalid_field("assertion", "an assertion links its holder's own account only")
    claims = await _verified(app, verifier, assertion, "federation.link")
    async with app.read() as db:
        org_siret = await db.scalar(
            select(Organization.siret).where(Organization.id == linked.organization_id)
        )
    if org_siret != claims.siret:
        raise siret_mismatch()
    await _ensure_free(app, linked.id, claims.issuer, claims.subject)
    destination.account_phone(linked)
    async with app.write() as db:
        flow = open_flow(
            app,
            db,
            FlowPurpose.FEDERATED_LINK,
            linked,
            client,
            session_id=caller.session_id,
            target_account_id=linked.id,
            federated_issuer=claims.issuer,
            federated_subject=claims.subject,
        )
        audit.record(
            db,
            app.clock,
            "federation.link_requested",
            organization_id=account.organization_id,
            actor=account.id,
            target=linked.id,
            issuer=claims.issuer,
        )
    others = await destination.other_factors(app, linked.id)
    return pending_view(flow, linked, destination.factor_channels(app.settings, others))


async def _propose(
    app: App,
    admin: Account,
    holder: Account,
    issuer: str | None,
    subject: str | None,
    verifier: AssertionVerifier,
    caller: SessionInfo,
) -> None:
    """An administrator names an identity for a member: audited, and the member is told."""
    require_admin(caller.role)
    if not issuer or not subject or len(issuer) > 256 or len(subject) > 256:
        raise invalid_field("subject", "issuer and subject are required")
    if not verifier.knows(issuer):
        raise refused("ASSERTION_ISSUER_UNKNOWN", "this issuer is not trusted")
    if holder.role == Role.ADMIN:
        # An identity an administrator names could be their own: never onto an admin.
        raise denied("an administrator links their identity themselves")
    # No look-up of the subject: whether it is linked elsewhere (another organisation) is none
    # of the administrator's business, and nothing here can take it.
    async with app.write() as db:
        notify(app, db, holder, "federated_link_proposed", admin_name=admin.display_name)
        app.outbox_ready.set()
        audit.record(
            db,
            app.clock,
            "federation.link_proposed",
            organization_id=admin.organization_id,
            actor=admin.id,
            target=holder.id,
            issuer=issuer,
        )


async def _ensure_free(app: App, account_id: uuid.UUID, issuer: str, subject: str) -> None:
    async with app.read() as db:
        taken = await db.scalar(
            select(FederatedIdentity.id).where(
                (FederatedIdentity.issuer == issuer)
                & (
                    (FederatedIdentity.subject == subject)
                    | (FederatedIdentity.account_id == account_id)
                )
            )
        )
    if taken is not None:
        raise identity_already_linked()


async def request_unlink(
    app: App,
    caller: SessionInfo,
    *,
    target_id: uuid.UUID | None,
    issuer: str,
    client: ClientInfo,
) -> PendingFlowView:
    account, target = await load_accounts(app, caller.account_id, target_id)
    own = target is None or target.id == account.id
    linked = account if own else target
    assert linked is not None
    if not own:
        require_admin(caller.role)
        if linked.organization_id != account.organization_id:
            raise denied("no such account in your organisation")
    if not issuer or len(issuer) > 256:
        raise invalid_field("issuer", "the issuer is required")
    async with app.read() as db:
        existing = await db.scalar(
            select(FederatedIdentity.id).where(
                FederatedIdentity.account_id == linked.id, FederatedIdentity.issuer == issuer
            )
        )
    if existing is None:
        raise identity_not_linked()
    destination.account_phone(account)
    async with app.write() as db:
        flow = open_flow(
            app,
            db,
            FlowPurpose.FEDERATED_UNLINK,
            account,
            client,
            session_id=caller.session_id,
            target_account_id=linked.id,
            federated_issuer=issuer,
        )
        audit.record(
            db,
            app.clock,
            "federation.unlink_requested",
            organization_id=account.organization_id,
            actor=account.id,
            target=linked.id,
            issuer=issuer,
        )
    others = await destination.other_factors(app, account.id)
    return pending_view(flow, account, destination.factor_channels(app.settings, others))


async def apply(app: App, db: AsyncSession, flow: Flow) -> FederatedLinkResult:
    """The code was right: link or unlink, in the winner's transaction."""
    assert flow.target_account_id is not None and flow.federated_issuer is not None
    organization_id = await db.scalar(
        select(Account.organization_id).where(Account.id == flow.target_account_id)
    )
    if flow.purpose == FlowPurpose.FEDERATED_UNLINK:
        await db.execute(
            delete(FederatedIdentity).where(
                FederatedIdentity.account_id == flow.target_account_id,
                FederatedIdentity.issuer == flow.federated_issuer,
            )
        )
        # A way in removed: what it opened ends with it (an identity unlinked because it was
        # taken over must not leave its sessions and trusted devices behind), as for any
        # credential change; the holder's own session that asked stays.
        own = flow.account_id == flow.target_account_id
        await revocation.end_trust(
            db,
            flow.target_account_id,
            app.clock.now(),
            keep_session=flow.session_id if own else None,
        )
        linked = False
    else:
        assert flow.federated_subject is not None
        # Only the holder's own session links (a flow opened for someone else before the rule
        # changed, or by any future path, would be a takeover): re-checked at the last moment.
        opener = await db.scalar(select(Session.account_id).where(Session.id == flow.session_id))
        if opener != flow.target_account_id:
            raise denied("only the account holder links an identity to their account")
        db.add(
            FederatedIdentity(
                account_id=flow.target_account_id,
                issuer=flow.federated_issuer,
                subject=flow.federated_subject,
                linked_at=app.clock.now(),
            )
        )
        try:
            await db.flush()
        except IntegrityError:  # linked elsewhere since the request: the unique keys decide
            raise identity_already_linked() from None
        linked = True
    # The holder hears of every change to how their account can be entered.
    holder = await db.scalar(select(Account).where(Account.id == flow.target_account_id))
    assert holder is not None
    what = "identité Net-entreprises (liée)" if linked else "identité Net-entreprises (retirée)"
    notify(app, db, holder, "contact_changed", what=what)
    app.outbox_ready.set()
    audit.record(
        db,
        app.clock,
        "federation.linked" if linked else "federation.unlinked",
        organization_id=organization_id,
        actor=flow.account_id,
        target=flow.target_account_id,
        issuer=flow.federated_issuer,
    )
    return FederatedLinkResult(flow.target_account_id, flow.federated_issuer, linked)

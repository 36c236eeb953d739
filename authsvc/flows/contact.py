"""Contact changes: the new email or phone must receive a code before it replaces the old one.

UpdateContact redeems the step-up grant and opens a contact-verification flow whose code goes
to the NEW contact; its Verify applies the change, notifies the old contact, and, for a phone,
revokes the account's trusted devices (the 7-day trust was earned with the old phone).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.accounts import revocation
from authsvc.app import App
from authsvc.courier.notices import notify
from authsvc.db import Account, Flow, FlowPurpose
from authsvc.db.base import new_id
from authsvc.flows import grants
from authsvc.flows.login import ClientInfo, open_flow, pending_view
from authsvc.flows.stepup import load_accounts
from authsvc.flows.views import PendingFlowView
from authsvc.phones import mask_email, parse_phone
from authsvc.policies.permissions import Action, check_target
from authsvc.sessions import SessionInfo


@dataclass(frozen=True)
class ContactVerified:
    account_id: uuid.UUID
    masked_email: str
    masked_phone: str


async def request_change(
    app: App,
    caller: SessionInfo,
    *,
    grant_token: str,
    target_id: uuid.UUID | None,
    email: str | None,
    phone: str | None,
    client: ClientInfo,
) -> PendingFlowView:
    account, target = await load_accounts(app, caller.account_id, target_id)
    own = target is None or target.id == account.id
    action = Action.UPDATE_OWN_CONTACT if own else Action.UPDATE_ACCOUNT_CONTACT
    bound_target = check_target(
        action,
        caller_id=account.id,
        caller_role=caller.role,
        caller_organization=account.organization_id,
        target=None if own else target,
    )
    values = grants.normalise(
        action,
        email=email,
        phone=phone,
        display_name=None,
        login=None,
        role=None,
        service_codes=[],
        catalogue={},
        default_region=app.settings.default_region,
    )
    flow_id = new_id()
    if values.phone is not None:
        parsed = parse_phone(values.phone, default_region=app.settings.default_region)
        kind, address, masked = parsed.kind.value, parsed.e164, parsed.masked
    else:
        assert values.email is not None
        kind, address, masked = "email", values.email, mask_email(values.email)
    async with app.write() as db:
        await grants.redeem(
            app,
            db,
            caller,
            token=grant_token,
            action=action,
            target=bound_target,
            values=values,
        )
        flow = open_flow(
            app,
            db,
            FlowPurpose.CONTACT_VERIFICATION,
            account,
            client,
            id=flow_id,
            session_id=caller.session_id,
            action=action.value,
            target_account_id=bound_target,
            contact_kind=kind,
            contact_sealed=app.keys.sealer.seal(address, flow_id.bytes),
            contact_masked=masked,
        )
        audit.record(
            db,
            app.clock,
            "contact.change_requested",
            organization_id=account.organization_id,
            actor=account.id,
            target=bound_target,
            kind=kind,
            new=masked,
        )
    return pending_view(flow, account)


async def apply(app: App, db: AsyncSession, flow: Flow) -> ContactVerified:
    """The new contact passed its code: make it the account's, in the winner's transaction."""
    assert flow.contact_sealed is not None and flow.target_account_id is not None
    target = await db.scalar(select(Account).where(Account.id == flow.target_account_id))
    assert target is not None
    now = app.clock.now()
    new_value = app.keys.sealer.open(flow.contact_sealed, flow.id.bytes)
    old_email = target.email
    if flow.contact_kind == "email":
        changes: dict[str, object] = {"email": new_value, "updated_at": now}
        what = "adresse électronique"
        await db.execute(update(Account).where(Account.id == target.id).values(**changes))
    else:
        phone = parse_phone(new_value, default_region=app.settings.default_region)
        changes = {
            "phone_sealed": app.keys.sealer.seal(phone.e164, target.id.bytes),
            "phone_digest": app.keys.lookup_digest(phone.e164),
            "phone_masked": phone.masked,
            "phone_kind": phone.kind.value,
            "phone_region": phone.region,
            "phone_verified_at": now,
            "updated_at": now,
        }
        what = "numéro de téléphone"
        # The new phone with the security epoch, then what trusted the old one ends (but the
        # session that made the change, and this flow, completing now).
        await revocation.end_trust(
            db,
            target.id,
            now,
            keep_session=flow.session_id,
            keep_flow=flow.id,
            account_values=changes,
        )
    notify(app, db, target, "contact_changed", to=old_email, what=what)
    audit.record(
        db,
        app.clock,
        "contact.changed",
        organization_id=target.organization_id,
        actor=flow.account_id,
        target=target.id,
        kind=str(flow.contact_kind),
        new=str(flow.contact_masked),
    )
    app.outbox_ready.set()
    refreshed_phone = str(changes.get("phone_masked", target.phone_masked or ""))
    refreshed_email = mask_email(str(changes.get("email", target.email)))
    return ContactVerified(target.id, refreshed_email, refreshed_phone)

"""The single-use link of a campaign email: it opens a contact verification, nothing more.

The holder of the email gives the phone to register; the link's token is spent (one conditional
UPDATE: unused, unexpired, the campaign running, the account still without a verified phone) in
the transaction that opens a contact-verification flow whose code goes to THAT phone. The
account changes only when Verify gets that code (flows/contact.py applies it, notifying the
account's email). So the token alone changes nothing, and it can never replace a phone that
already received a code: a verified phone is changed through UpdateContact, with a step-up.
Every refusal (unknown, used, replaced by a later email, expired, campaign over, account ready)
is the same answer, LINK_INVALID, and spends nothing.
"""

from __future__ import annotations

from sqlalchemy import or_, select, update

from authsvc import audit, validation
from authsvc.app import App
from authsvc.db import (
    Account,
    AccountStatus,
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    FlowPurpose,
)
from authsvc.db.base import new_id
from authsvc.errors import Failure
from authsvc.flows.login import ClientInfo, open_flow, pending_view
from authsvc.flows.views import PendingFlowView
from authsvc.otp import token_digest
from authsvc.phones import parse_phone
from authsvc.policies.permissions import Action


def link_invalid() -> Failure:
    return Failure(
        "NOT_FOUND",
        "LINK_INVALID",
        "this link is not valid (used, replaced by a later email, or expired)",
    )


async def open_link(app: App, *, token: str, phone: str, client: ClientInfo) -> PendingFlowView:
    token = validation.token(token, "link_token")
    parsed = parse_phone(phone, field="phone", default_region=app.settings.default_region)
    now = app.clock.now()
    digest = token_digest(token)
    running = select(Campaign.id).where(
        Campaign.id == CampaignRecipient.campaign_id, Campaign.status == CampaignStatus.RUNNING
    )
    without_verified_phone = select(Account.id).where(
        Account.id == CampaignRecipient.account_id,
        or_(Account.phone_kind.is_(None), Account.phone_verified_at.is_(None)),
        Account.status.in_([AccountStatus.ACTIVE, AccountStatus.PENDING_ACTIVATION]),
    )
    flow_id = new_id()
    async with app.write() as db:
        spent = await db.execute(
            update(CampaignRecipient)
            .where(
                CampaignRecipient.link_digest == digest,
                CampaignRecipient.link_used_at.is_(None),
                CampaignRecipient.link_expires_at > now,
                running.exists(),
                without_verified_phone.exists(),
            )
            .values(link_used_at=now)
            .returning(CampaignRecipient.account_id, CampaignRecipient.campaign_id)
        )
        row = spent.first()
        if row is None:
            raise link_invalid()
        account_id, campaign_id = row
        account = await db.scalar(select(Account).where(Account.id == account_id))
        assert account is not None
        flow = open_flow(
            app,
            db,
            FlowPurpose.CONTACT_VERIFICATION,
            account,
            client,
            id=flow_id,
            session_id=None,
            action=Action.UPDATE_OWN_CONTACT.value,
            target_account_id=account.id,
            contact_kind=parsed.kind.value,
            contact_sealed=app.keys.sealer.seal(parsed.e164, flow_id.bytes),
            contact_masked=parsed.masked,
        )
        audit.record(
            db,
            app.clock,
            "campaign.link_opened",
            organization_id=account.organization_id,
            actor=account.id,
            target=account.id,
            campaign_id=str(campaign_id),
            kind=parsed.kind.value,
            new=parsed.masked,
        )
    return pending_view(flow, account)

"""ReadinessService: relays' views and readiness campaigns; see
proto/authsvc/v1/readiness_service.proto."""

from __future__ import annotations

import uuid
from typing import Any

from grpc.aio import ServicerContext
from sqlalchemy import select

from authsvc.accounts.directory import Readiness
from authsvc.api import convert
from authsvc.api.account_servicer import required_grant
from authsvc.api.auth_servicer import signed_in
from authsvc.api.rpc import rpc
from authsvc.app import App
from authsvc.campaigns import campaign, link, relays
from authsvc.db import Organization
from authsvc.policies.permissions import Action
from authsvc.v1 import account_service_pb2, readiness_service_pb2_grpc
from authsvc.v1 import readiness_service_pb2 as pb

Ctx = ServicerContext[Any, Any]


def member(organization: relays.MemberOrganization) -> pb.MemberOrganization:
    return pb.MemberOrganization(siret=organization.siret, name=organization.name)


def counts(report: Readiness) -> pb.ReadinessCounts:
    return pb.ReadinessCounts(
        accounts_total=report.accounts_total,
        ready=report.ready,
        with_verified_phone=report.with_verified_phone,
        mobile=report.mobile,
        landline=report.landline,
        without_phone=report.without_phone,
        pending_activation=report.pending_activation,
        administrators=report.administrators,
        reachable_administrators=report.reachable_administrators,
        ready_administrators=report.ready_administrators,
        with_authenticator_app=report.other_factors.with_authenticator_app,
        with_passkey=report.other_factors.with_passkey,
    )


def overview(view: relays.MemberView) -> pb.MemberOverview:
    progress = view.campaign
    return pb.MemberOverview(
        organization=member(view.organization),
        readiness=counts(view.readiness),
        administrators=[
            account_service_pb2.AdministratorContact(
                display_name=a.display_name,
                masked_email=a.masked_email,
                masked_phone=a.masked_phone,
            )
            for a in view.administrators
        ],
        without_ready_administrator=view.without_ready_administrator,
        campaign=pb.CampaignProgress(
            campaign_id=str(progress.campaign_id or ""),
            running=progress.running,
            recipients=progress.recipients,
            became_ready=progress.became_ready,
            emails_sent=progress.emails_sent,
        ),
        trend=[
            pb.ReadinessDay(
                day=day.day.isoformat(),
                accounts_total=day.accounts_total,
                ready=day.ready,
                no_phone=day.no_phone,
                invalid_phone=day.invalid_phone,
                phone_unverified=day.phone_unverified,
                pending_activation=day.pending_activation,
            )
            for day in view.trend
        ],
    )


class ReadinessServicer(readiness_service_pb2_grpc.ReadinessServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc("ListRelayMembers")
    async def ListRelayMembers(
        self, request: pb.ListRelayMembersRequest, context: Ctx
    ) -> pb.ListRelayMembersResponse:
        caller = await signed_in(self._app, request.session_token)
        convert.client_info(request.client)
        members = await relays.list_members(self._app, caller)
        return pb.ListRelayMembersResponse(members=[member(m) for m in members])

    @rpc("AddRelayMembers")
    async def AddRelayMembers(
        self, request: pb.AddRelayMembersRequest, context: Ctx
    ) -> pb.AddRelayMembersResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        convert.client_info(request.client)
        added = await relays.change_members(
            self._app,
            caller,
            action=Action.ADD_RELAY_MEMBERS,
            grant_token=token,
            sirets=list(request.organization_sirets),
        )
        return pb.AddRelayMembersResponse(members=[member(m) for m in added])

    @rpc("RemoveRelayMembers")
    async def RemoveRelayMembers(
        self, request: pb.RemoveRelayMembersRequest, context: Ctx
    ) -> pb.RemoveRelayMembersResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        convert.client_info(request.client)
        removed = await relays.change_members(
            self._app,
            caller,
            action=Action.REMOVE_RELAY_MEMBERS,
            grant_token=token,
            sirets=list(request.organization_sirets),
        )
        return pb.RemoveRelayMembersResponse(removed=[member(m) for m in removed])

    @rpc("GetRelayOverview")
    async def GetRelayOverview(
        self, request: pb.GetRelayOverviewRequest, context: Ctx
    ) -> pb.GetRelayOverviewResponse:
        caller = await signed_in(self._app, request.session_token)
        convert.client_info(request.client)
        relay, views = await relays.overview(self._app, caller)
        return pb.GetRelayOverviewResponse(
            relay_name=relay.name, members=[overview(view) for view in views]
        )

    @rpc("StartReadinessCampaign")
    async def StartReadinessCampaign(
        self, request: pb.StartReadinessCampaignRequest, context: Ctx
    ) -> pb.StartReadinessCampaignResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        convert.client_info(request.client)
        started = await campaign.start_for(
            self._app, caller, grant_token=token, sirets=list(request.organization_sirets)
        )
        self._app.outbox_ready.set()
        covered = await _sirets(self._app, started.already_covered)
        return pb.StartReadinessCampaignResponse(
            campaign_id=str(started.campaign_id),
            recipients=started.recipients,
            already_covered_sirets=covered,
        )

    @rpc("OpenReadinessLink")
    async def OpenReadinessLink(
        self, request: pb.OpenReadinessLinkRequest, context: Ctx
    ) -> pb.OpenReadinessLinkResponse:
        client = convert.client_info(request.client)
        view = await link.open_link(
            self._app, token=request.link_token, phone=request.phone, client=client
        )
        return pb.OpenReadinessLinkResponse(pending_flow=convert.pending_flow(view))


async def _sirets(app: App, organization_ids: list[uuid.UUID]) -> list[str]:
    if not organization_ids:
        return []
    async with app.read() as db:
        return sorted(
            await db.scalars(
                select(Organization.siret).where(Organization.id.in_(organization_ids))
            )
        )

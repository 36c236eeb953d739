"""AccountService: account administration. Every change of email, phone, password or access
redeems a step-up grant; see proto/authsvc/v1/account_service.proto."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from authsvc import validation
from authsvc.accounts import audit_log, creation, directory, password, services
from authsvc.api import convert
from authsvc.api.auth_servicer import action_values, signed_in
from authsvc.api.rpc import rpc
from authsvc.app import App
from authsvc.db import Account
from authsvc.errors import Failure, invalid_field
from authsvc.federation.assertions import AssertionVerifier
from authsvc.flows import contact, federated, stepup
from authsvc.phones import mask_email
from authsvc.policies.permissions import Action, require_admin
from authsvc.v1 import account_service_pb2 as pb
from authsvc.v1 import account_service_pb2_grpc as pb_grpc
from authsvc.v1 import auth_service_pb2

Ctx = ServicerContext[Any, Any]

STATUS_TO_PB = {
    "pending_activation": pb.ACCOUNT_STATUS_PENDING_ACTIVATION,
    "active": pb.ACCOUNT_STATUS_ACTIVE,
    "locked": pb.ACCOUNT_STATUS_LOCKED,
    "disabled": pb.ACCOUNT_STATUS_DISABLED,
}
PHONE_TO_PB = {"mobile": pb.PHONE_TYPE_MOBILE, "landline": pb.PHONE_TYPE_LANDLINE}
ISSUE_TO_PB = {
    "no_phone": pb.READINESS_ISSUE_NO_PHONE,
    "invalid_phone": pb.READINESS_ISSUE_INVALID_PHONE,
    "phone_unverified": pb.READINESS_ISSUE_PHONE_UNVERIFIED,
    "pending_activation": pb.READINESS_ISSUE_PENDING_ACTIVATION,
}


def summary(account: Account, service_codes: list[str]) -> pb.AccountSummary:
    return pb.AccountSummary(
        account_id=str(account.id),
        login=account.login,
        display_name=account.display_name,
        masked_email=mask_email(account.email),
        masked_phone=account.phone_masked or "",
        phone_type=PHONE_TO_PB.get(account.phone_kind or "", pb.PHONE_TYPE_NONE),
        role=convert.ROLE_TO_PB[str(account.role)],
        status=STATUS_TO_PB[str(account.status)],
        service_codes=service_codes,
    )


def required_grant(token: str) -> str:
    """No grant, no change: the operation needs a fresh code first."""
    if not token:
        raise Failure(
            "FAILED_PRECONDITION",
            "GRANT_REQUIRED",
            "this change needs an action grant: AuthorizeSensitiveAction, Challenge, Verify",
        )
    return validation.token(token, "grant_token")


class AccountServicer(pb_grpc.AccountServiceServicer):
    def __init__(self, app: App, verifier: AssertionVerifier) -> None:
        self._app = app
        self._verifier = verifier

    @rpc("CreateAccount")
    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: Ctx
    ) -> pb.CreateAccountResponse:
        caller = await signed_in(self._app, request.session_token)
        require_admin(caller.role)
        token = required_grant(request.grant_token)
        values = action_values(
            self._app,
            Action.CREATE_ACCOUNT,
            auth_service_pb2.ActionValues(
                email=request.email,
                phone=request.phone,
                display_name=request.display_name,
                login=request.login,
                role=request.role,
            ),
        )
        convert.client_info(request.client)
        account = await creation.create_with_grant(
            self._app, caller, grant_token=token, values=values
        )
        return pb.CreateAccountResponse(account=summary(account, []))

    @rpc("ActivateAccount")
    async def ActivateAccount(
        self, request: pb.ActivateAccountRequest, context: Ctx
    ) -> pb.ActivateAccountResponse:
        token = validation.token(request.activation_token, "activation_token")
        new_password = validation.password(request.password, "password")
        convert.client_info(request.client)
        account_id = await creation.activate(self._app, token=token, password=new_password)
        return pb.ActivateAccountResponse(account_id=str(account_id))

    @rpc("UpdateContact")
    async def UpdateContact(
        self, request: pb.UpdateContactRequest, context: Ctx
    ) -> pb.UpdateContactResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        target = stepup.parse_target(request.target_account_id)
        which = request.WhichOneof("contact")
        if which is None:
            raise invalid_field("contact", "give the new email or the new phone")
        client = convert.client_info(request.client)
        view = await contact.request_change(
            self._app,
            caller,
            grant_token=token,
            target_id=target,
            email=request.email if which == "email" else None,
            phone=request.phone if which == "phone" else None,
            client=client,
        )
        return pb.UpdateContactResponse(pending_flow=convert.pending_flow(view))

    @rpc("ChangePassword")
    async def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: Ctx
    ) -> pb.ChangePasswordResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        current = validation.password(request.current_password, "current_password")
        if not request.new_password:
            raise invalid_field("new_password", "the new password is required")
        client = convert.client_info(request.client)
        changed = await password.change_password(
            self._app,
            caller,
            grant_token=token,
            current=current,
            new=request.new_password,
            client=client,
        )
        return pb.ChangePasswordResponse(
            revoked_sessions=changed.revoked_sessions, revoked_devices=changed.revoked_devices
        )

    @rpc("GrantServiceAccess")
    async def GrantServiceAccess(
        self, request: pb.GrantServiceAccessRequest, context: Ctx
    ) -> pb.GrantServiceAccessResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        target = stepup.parse_target(request.target_account_id)
        codes = convert.service_codes(request.service_codes, "service_codes")
        convert.client_info(request.client)
        result = await services.grant_access(
            self._app, caller, grant_token=token, target_id=target, codes=codes
        )
        return pb.GrantServiceAccessResponse(service_codes=result)

    @rpc("RevokeServiceAccess")
    async def RevokeServiceAccess(
        self, request: pb.RevokeServiceAccessRequest, context: Ctx
    ) -> pb.RevokeServiceAccessResponse:
        caller = await signed_in(self._app, request.session_token)
        target = stepup.parse_target(request.target_account_id)
        codes = convert.service_codes(request.service_codes, "service_codes")
        convert.client_info(request.client)
        result = await services.revoke_access(self._app, caller, target_id=target, codes=codes)
        return pb.RevokeServiceAccessResponse(service_codes=result)

    @rpc("ListServices")
    async def ListServices(
        self, request: pb.ListServicesRequest, context: Ctx
    ) -> pb.ListServicesResponse:
        await signed_in(self._app, request.session_token)
        convert.client_info(request.client)
        return pb.ListServicesResponse(
            services=[
                pb.Service(code=code, name=name)
                for code, name in sorted(self._app.settings.services.items())
            ]
        )

    @rpc("ListOrganizationAdministrators")
    async def ListOrganizationAdministrators(
        self, request: pb.ListOrganizationAdministratorsRequest, context: Ctx
    ) -> pb.ListOrganizationAdministratorsResponse:
        caller = await signed_in(self._app, request.session_token)
        convert.client_info(request.client)
        name, admins = await directory.administrators(self._app, caller)
        return pb.ListOrganizationAdministratorsResponse(
            organization_name=name,
            administrators=[
                pb.AdministratorContact(
                    display_name=a.display_name,
                    masked_email=a.masked_email,
                    masked_phone=a.masked_phone,
                )
                for a in admins
            ],
        )

    @rpc("GetOrganizationReadiness")
    async def GetOrganizationReadiness(
        self, request: pb.GetOrganizationReadinessRequest, context: Ctx
    ) -> pb.GetOrganizationReadinessResponse:
        caller = await signed_in(self._app, request.session_token)
        convert.client_info(request.client)
        report = await directory.readiness_for(self._app, caller)
        return pb.GetOrganizationReadinessResponse(
            accounts_total=report.accounts_total,
            with_verified_phone=report.with_verified_phone,
            mobile=report.mobile,
            landline=report.landline,
            without_phone=report.without_phone,
            pending_activation=report.pending_activation,
            administrators=report.administrators,
            reachable_administrators=report.reachable_administrators,
            ready=report.ready,
            ready_administrators=report.ready_administrators,
            with_authenticator_app=report.other_factors.with_authenticator_app,
            with_passkey=report.other_factors.with_passkey,
            accounts=[
                pb.AccountReadiness(
                    account_id=str(issue.account_id),
                    login=issue.login,
                    display_name=issue.display_name,
                    issue=ISSUE_TO_PB[issue.issue],
                    other_factors=[convert.FACTOR_KIND_TO_PB[k] for k in issue.other_factors],
                )
                for issue in report.issues
            ],
        )

    @rpc("ListAuditEvents")
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        caller = await signed_in(self._app, request.session_token)
        convert.client_info(request.client)
        page = await audit_log.list_events(
            self._app, caller, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListAuditEventsResponse(
            events=[
                pb.AuditEvent(
                    sequence=event.sequence,
                    occur_time=convert.timestamp(event.occurred_at),
                    event_type=event.event_type,
                    outcome=event.outcome,
                    actor_account_id=str(event.actor_account_id or ""),
                    target_account_id=str(event.target_account_id or ""),
                    ip_address=event.ip_address,
                    request_id=event.request_id,
                    details=details,
                )
                for event, details in zip(page.events, page.details, strict=True)
            ],
            next_page_token=page.next_page_token,
        )

    @rpc("LinkFederatedIdentity")
    async def LinkFederatedIdentity(
        self, request: pb.LinkFederatedIdentityRequest, context: Ctx
    ) -> pb.LinkFederatedIdentityResponse:
        caller = await signed_in(self._app, request.session_token)
        target = stepup.parse_target(request.target_account_id)
        which = request.WhichOneof("identity")
        if which is None:
            raise invalid_field("identity", "give an assertion or an issuer and subject")
        client = convert.client_info(request.client)
        view = await federated.request_link(
            self._app,
            self._verifier,
            caller,
            target_id=target,
            assertion=request.assertion if which == "assertion" else None,
            issuer=request.subject.issuer if which == "subject" else None,
            subject=request.subject.subject if which == "subject" else None,
            client=client,
        )
        if view is None:  # an administrator's proposal: the holder links it themselves
            return pb.LinkFederatedIdentityResponse(proposed_to_holder=True)
        return pb.LinkFederatedIdentityResponse(pending_flow=convert.pending_flow(view))

    @rpc("UnlinkFederatedIdentity")
    async def UnlinkFederatedIdentity(
        self, request: pb.UnlinkFederatedIdentityRequest, context: Ctx
    ) -> pb.UnlinkFederatedIdentityResponse:
        caller = await signed_in(self._app, request.session_token)
        target = stepup.parse_target(request.target_account_id)
        client = convert.client_info(request.client)
        view = await federated.request_unlink(
            self._app, caller, target_id=target, issuer=request.issuer, client=client
        )
        return pb.UnlinkFederatedIdentityResponse(pending_flow=convert.pending_flow(view))

"""AuthService: Login, Challenge, Verify, AuthorizeSensitiveAction, ValidateSession, Logout."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from grpc.aio import ServicerContext

from authsvc import metrics, sessions, validation
from authsvc.api import convert
from authsvc.api.callers import current_backend
from authsvc.api.rpc import rpc
from authsvc.app import App
from authsvc.db import FlowPurpose
from authsvc.errors import Failure, invalid_field
from authsvc.federation.assertions import AssertionVerifier
from authsvc.flows import challenge, federated, grants, login, stepup, totp, verify
from authsvc.flows.contact import ContactVerified
from authsvc.flows.views import IssuedSession, LoginVerified, PendingFlowView
from authsvc.policies.permissions import OWN_ACTIONS, Action
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

Ctx = ServicerContext[Any, Any]


async def signed_in(app: App, token: str) -> sessions.SessionInfo:
    """The caller's session, from a request's session_token field."""
    return await sessions.validate(app, validation.token(token, "session_token"))


def action_values(app: App, action: Action, values: pb.ActionValues) -> grants.ActionValues:
    return grants.normalise(
        action,
        email=values.email if values.HasField("email") else None,
        phone=values.phone if values.HasField("phone") else None,
        display_name=values.display_name if values.HasField("display_name") else None,
        login=values.login if values.HasField("login") else None,
        role=convert.role_from_pb(values.role, "new_values.role"),
        service_codes=convert.service_codes(values.service_codes, "new_values.service_codes"),
        catalogue=app.settings.services,
        default_region=app.settings.default_region,
        organization_sirets=list(values.organization_sirets),
        factor_id=values.factor_id if values.HasField("factor_id") else None,
    )


# What a right code gave, as the Verify metric names it.
_PURPOSE_OF: dict[type, str] = {
    LoginVerified: FlowPurpose.LOGIN.value,
    grants.IssuedGrant: FlowPurpose.STEP_UP.value,
    ContactVerified: FlowPurpose.CONTACT_VERIFICATION.value,
    federated.FederatedLinkResult: FlowPurpose.FEDERATED_LINK.value,
}


async def _first_factor(
    method: str, checked: Awaitable[IssuedSession | PendingFlowView]
) -> IssuedSession | PendingFlowView:
    """A first factor's outcome, counted: a session (trusted device), a code needed, or the
    refusal's reason."""
    try:
        result = await checked
    except Failure as failure:
        metrics.first_factor(method, failure.reason)
        raise
    metrics.first_factor(method, "session" if isinstance(result, IssuedSession) else "code_needed")
    return result


class AuthServicer(pb_grpc.AuthServiceServicer):
    def __init__(self, app: App, verifier: AssertionVerifier) -> None:
        self._app = app
        self._verifier = verifier

    @rpc("Login")
    async def Login(self, request: pb.LoginRequest, context: Ctx) -> pb.LoginResponse:
        credential = request.WhichOneof("credential")
        if credential is None:
            raise invalid_field("password", "a credential is required")
        device_token = validation.optional_token(request.device_token, "device_token")
        result: IssuedSession | PendingFlowView
        if credential == "federated":
            # The assertion names the account; organisation and login, when given, must match.
            siret = (
                validation.siret(request.organization_siret) if request.organization_siret else None
            )
            account_login = validation.login(request.login) if request.login else None
            if not request.federated.assertion:
                raise invalid_field("federated.assertion", "the assertion is required")
            client = convert.client_info(request.client, ip_required=True)
            result = await _first_factor(
                "federated",
                federated.login_with_assertion(
                    self._app,
                    self._verifier,
                    assertion=request.federated.assertion,
                    siret=siret,
                    login=account_login,
                    device_token=device_token,
                    client=client,
                ),
            )
        else:
            siret = validation.siret(request.organization_siret)
            account_login = validation.login(request.login)
            password = validation.password(request.password.password, "password.password")
            client = convert.client_info(request.client, ip_required=True)
            result = await _first_factor(
                "password",
                login.login_with_password(
                    self._app,
                    siret=siret,
                    login=account_login,
                    password=password,
                    device_token=device_token,
                    client=client,
                ),
            )
        if isinstance(result, IssuedSession):
            return pb.LoginResponse(session=convert.session(result))
        return pb.LoginResponse(pending_flow=convert.pending_flow(result))

    @rpc("Challenge")
    async def Challenge(self, request: pb.ChallengeRequest, context: Ctx) -> pb.ChallengeResponse:
        flow_id = validation.flow_id(request.flow_id)
        channel = convert.channel_from_pb(request.channel)
        # Scoped to the calling backend, as the proto says (api/callers.py names it).
        key = convert.scoped_idempotency_key(
            current_backend.get(), validation.idempotency_key(request.idempotency_key)
        )
        client = convert.client_info(request.client)
        view = await challenge.challenge(
            self._app, challenge.ChallengeRequest(flow_id, channel, key, client.ip_address)
        )
        return pb.ChallengeResponse(
            challenge_id=str(view.challenge_id),
            channel=convert.CHANNEL_TO_PB[view.channel],
            masked_destination=view.masked_destination,
            code_expire_time=convert.timestamp(view.code_expires_at),
            resend_time=convert.timestamp(view.resend_at),
            sends_remaining=view.sends_remaining,
            delivery_status=convert.DELIVERY_TO_PB[view.delivery_status],
            next_channel=(
                convert.CHANNEL_TO_PB[view.next_channel]
                if view.next_channel is not None
                else common_pb2.CHANNEL_UNSPECIFIED
            ),
        )

    @rpc("Verify")
    async def Verify(self, request: pb.VerifyRequest, context: Ctx) -> pb.VerifyResponse:
        flow_id = validation.flow_id(request.flow_id)
        # A sent code's length, or an authenticator app's (RFC 6238's 6, whatever the setting).
        code = validation.code(request.code, self._app.settings.code_digits, totp.DIGITS)
        client = convert.client_info(request.client)
        try:
            result = await verify.verify(self._app, verify.VerifyRequest(flow_id, code, client))
        except Failure as failure:
            metrics.verify_refused(failure.reason)
            raise
        unlinked = isinstance(result, federated.FederatedLinkResult) and not result.linked
        metrics.verified(
            FlowPurpose.FEDERATED_UNLINK.value if unlinked else _PURPOSE_OF[type(result)]
        )
        if isinstance(result, grants.IssuedGrant):
            metrics.step_up("issued")
            return pb.VerifyResponse(
                action_grant=pb.ActionGrant(
                    grant_token=result.token,
                    action=convert.ACTION_TO_PB[result.action],
                    target_account_id=str(result.target_account_id or ""),
                    expire_time=convert.timestamp(result.expires_at),
                )
            )
        if isinstance(result, federated.FederatedLinkResult):
            return pb.VerifyResponse(
                federated_link=pb.FederatedLinkResult(
                    account_id=str(result.account_id), issuer=result.issuer, linked=result.linked
                )
            )
        if isinstance(result, ContactVerified):
            return pb.VerifyResponse(
                contact=pb.ContactVerification(
                    account_id=str(result.account_id),
                    masked_email=result.masked_email,
                    masked_phone=result.masked_phone,
                )
            )
        return pb.VerifyResponse(
            login=pb.LoginVerification(
                session=convert.session(result.session),
                device_token=result.device_token,
                device_trust_expire_time=convert.timestamp(result.device_trust_expires_at),
            )
        )

    @rpc("AuthorizeSensitiveAction")
    async def AuthorizeSensitiveAction(
        self, request: pb.AuthorizeSensitiveActionRequest, context: Ctx
    ) -> pb.AuthorizeSensitiveActionResponse:
        caller = await signed_in(self._app, request.session_token)
        action = convert.action_from_pb(request.action)
        target = stepup.parse_target(request.target_account_id)
        values = action_values(self._app, action, request.new_values)
        client = convert.client_info(request.client)
        view = await stepup.authorize(self._app, caller, action, target, values, client)
        metrics.step_up("requested")
        return pb.AuthorizeSensitiveActionResponse(pending_flow=convert.pending_flow(view))

    @rpc("RedeemActionGrant")
    async def RedeemActionGrant(
        self, request: pb.RedeemActionGrantRequest, context: Ctx
    ) -> pb.RedeemActionGrantResponse:
        caller = await signed_in(self._app, request.session_token)
        token = validation.token(request.grant_token, "grant_token")
        action = convert.action_from_pb(request.action)
        target = stepup.parse_target(request.target_account_id)
        if action in OWN_ACTIONS and target is None:
            target = caller.account_id
        values = action_values(self._app, action, request.new_values)
        convert.client_info(request.client)
        try:
            grant = await grants.redeem_now(
                self._app, caller, token=token, action=action, target=target, values=values
            )
        except Failure as failure:
            metrics.step_up("refused", failure.reason)
            raise
        metrics.step_up("redeemed")
        return pb.RedeemActionGrantResponse(
            account_id=str(grant.account_id),
            redeem_time=convert.timestamp(grant.redeemed_at or self._app.clock.now()),
        )

    @rpc("ValidateSession")
    async def ValidateSession(
        self, request: pb.ValidateSessionRequest, context: Ctx
    ) -> pb.ValidateSessionResponse:
        token = validation.token(request.session_token, "session_token")
        convert.client_info(request.client)
        info = await sessions.validate(self._app, token)
        return pb.ValidateSessionResponse(
            account_id=str(info.account_id),
            login=info.login,
            organization_id=str(info.organization_id),
            organization_siret=info.organization_siret,
            role=convert.ROLE_TO_PB[info.role.value],
            assurance_level=convert.AAL_TO_PB[info.assurance_level],
            auth_time=convert.timestamp(info.auth_time),
            last_code_time=convert.timestamp(info.last_code_time),
            expire_time=convert.timestamp(info.expires_at),
            idle_expire_time=convert.timestamp(info.idle_expires_at),
        )

    @rpc("Logout")
    async def Logout(self, request: pb.LogoutRequest, context: Ctx) -> pb.LogoutResponse:
        token = validation.token(request.session_token, "session_token")
        convert.client_info(request.client)
        await sessions.revoke(self._app, token)
        return pb.LogoutResponse()

"""AuthService: Login, Challenge, Verify, AuthorizeSensitiveAction, ValidateSession, Logout."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from authsvc import sessions, validation
from authsvc.api import convert
from authsvc.api.rpc import rpc
from authsvc.app import App
from authsvc.errors import invalid_field
from authsvc.flows import challenge, failures, login, verify
from authsvc.flows.views import IssuedSession
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

Ctx = ServicerContext[Any, Any]


class AuthServicer(pb_grpc.AuthServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc("Login")
    async def Login(self, request: pb.LoginRequest, context: Ctx) -> pb.LoginResponse:
        siret = validation.siret(request.organization_siret)
        account_login = validation.login(request.login)
        if request.WhichOneof("credential") != "password":
            raise invalid_field("password", "a credential is required")
        password = validation.password(request.password.password, "password.password")
        device_token = validation.optional_token(request.device_token, "device_token")
        client = convert.client_info(request.client, ip_required=True)
        result = await login.login_with_password(
            self._app,
            siret=siret,
            login=account_login,
            password=password,
            device_token=device_token,
            client=client,
        )
        if isinstance(result, IssuedSession):
            return pb.LoginResponse(session=convert.session(result))
        return pb.LoginResponse(pending_flow=convert.pending_flow(result))

    @rpc("Challenge")
    async def Challenge(self, request: pb.ChallengeRequest, context: Ctx) -> pb.ChallengeResponse:
        flow_id = validation.flow_id(request.flow_id)
        channel = convert.channel_from_pb(request.channel)
        key = validation.idempotency_key(request.idempotency_key)
        convert.client_info(request.client)
        view = await challenge.challenge(
            self._app, challenge.ChallengeRequest(flow_id, channel, key)
        )
        return pb.ChallengeResponse(
            challenge_id=str(view.challenge_id),
            channel=convert.CHANNEL_TO_PB[view.channel],
            masked_destination=view.masked_destination,
            code_expire_time=convert.timestamp(view.code_expires_at),
            resend_time=convert.timestamp(view.resend_at),
            sends_remaining=view.sends_remaining,
            delivery_status=convert.DELIVERY_TO_PB[view.delivery_status],
        )

    @rpc("Verify")
    async def Verify(self, request: pb.VerifyRequest, context: Ctx) -> pb.VerifyResponse:
        flow_id = validation.flow_id(request.flow_id)
        code = validation.code(request.code, self._app.settings.code_digits)
        client = convert.client_info(request.client)
        result = await verify.verify(self._app, verify.VerifyRequest(flow_id, code, client))
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
        validation.token(request.session_token, "session_token")
        await sessions.validate(self._app, request.session_token)
        raise failures.not_implemented("AuthorizeSensitiveAction")

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

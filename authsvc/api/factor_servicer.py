"""FactorService: authenticator apps (TOTP) and passkeys as second factors; see
proto/authsvc/v1/factor_service.proto."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from authsvc import validation
from authsvc.accounts import factors, passkeys
from authsvc.api import convert
from authsvc.api.account_servicer import required_grant
from authsvc.api.auth_servicer import signed_in
from authsvc.api.rpc import rpc
from authsvc.app import App
from authsvc.flows import stepup, totp
from authsvc.v1 import factor_service_pb2 as pb
from authsvc.v1 import factor_service_pb2_grpc as pb_grpc

Ctx = ServicerContext[Any, Any]


def factor(view: factors.FactorView) -> pb.Factor:
    shown = pb.Factor(
        factor_id=str(view.id),
        kind=convert.FACTOR_KIND_TO_PB[view.kind],
        name=view.name,
        create_time=convert.timestamp(view.confirmed_at),
    )
    if view.last_used_at is not None:
        shown.last_use_time.CopyFrom(convert.timestamp(view.last_used_at))
    if view.disabled_at is not None:
        shown.disable_time.CopyFrom(convert.timestamp(view.disabled_at))
    return shown


class FactorServicer(pb_grpc.FactorServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc("BeginTotpEnrollment")
    async def BeginTotpEnrollment(
        self, request: pb.BeginTotpEnrollmentRequest, context: Ctx
    ) -> pb.BeginTotpEnrollmentResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        name = factors.factor_name(request.name)
        started = await factors.begin_totp(self._app, caller, grant_token=token, name=name)
        return pb.BeginTotpEnrollmentResponse(
            factor_id=str(started.factor_id),
            otpauth_uri=started.otpauth_uri,
            secret_base32=started.secret_base32,
            qr_code_svg=started.qr_code_svg,
            expire_time=convert.timestamp(started.expires_at),
        )

    @rpc("ConfirmTotpEnrollment")
    async def ConfirmTotpEnrollment(
        self, request: pb.ConfirmTotpEnrollmentRequest, context: Ctx
    ) -> pb.ConfirmTotpEnrollmentResponse:
        caller = await signed_in(self._app, request.session_token)
        factor_id = factors.parse_factor_id(request.factor_id)
        code = validation.code(request.code, totp.DIGITS)
        client = convert.client_info(request.client)
        view = await factors.confirm_totp(
            self._app, caller, factor_id=factor_id, code=code, client=client
        )
        return pb.ConfirmTotpEnrollmentResponse(factor=factor(view))

    @rpc("ListFactors")
    async def ListFactors(
        self, request: pb.ListFactorsRequest, context: Ctx
    ) -> pb.ListFactorsResponse:
        caller = await signed_in(self._app, request.session_token)
        holder = stepup.parse_target(request.account_id, "account_id")
        found = await factors.list_factors(self._app, caller, holder)
        found += await passkeys.list_passkeys(self._app, caller, holder)
        return pb.ListFactorsResponse(factors=[factor(view) for view in found])

    @rpc("RemoveFactor")
    async def RemoveFactor(
        self, request: pb.RemoveFactorRequest, context: Ctx
    ) -> pb.RemoveFactorResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        factor_id = factors.parse_factor_id(request.factor_id)
        holder = stepup.parse_target(request.account_id, "account_id")
        # A passkey's id or an app's (both uuid4): each kind removes its own, same rules.
        remove = (
            passkeys.remove_passkey
            if await passkeys.owns(self._app, factor_id)
            else factors.remove_factor
        )
        revoked = await remove(
            self._app, caller, grant_token=token, factor_id=factor_id, account_id=holder
        )
        return pb.RemoveFactorResponse(revoked_sessions=revoked)

"""PasskeyService: passkey ceremonies relayed by the backends; see
proto/authsvc/v1/passkey_service.proto."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from authsvc import metrics, validation
from authsvc.accounts import factors, passkeys
from authsvc.api import convert
from authsvc.api.account_servicer import required_grant
from authsvc.api.auth_servicer import signed_in
from authsvc.api.factor_servicer import factor
from authsvc.api.rpc import rpc
from authsvc.app import App
from authsvc.flows import federated, grants, passkey
from authsvc.v1 import auth_service_pb2 as auth_pb
from authsvc.v1 import passkey_service_pb2 as pb
from authsvc.v1 import passkey_service_pb2_grpc as pb_grpc

Ctx = ServicerContext[Any, Any]


class PasskeyServicer(pb_grpc.PasskeyServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc("BeginPasskeyRegistration")
    async def BeginPasskeyRegistration(
        self, request: pb.BeginPasskeyRegistrationRequest, context: Ctx
    ) -> pb.BeginPasskeyRegistrationResponse:
        caller = await signed_in(self._app, request.session_token)
        token = required_grant(request.grant_token)
        begun = await passkeys.begin_registration(self._app, caller, grant_token=token)
        return pb.BeginPasskeyRegistrationResponse(
            ceremony_id=str(begun.ceremony_id), creation_options_json=begun.options_json
        )

    @rpc("FinishPasskeyRegistration")
    async def FinishPasskeyRegistration(
        self, request: pb.FinishPasskeyRegistrationRequest, context: Ctx
    ) -> pb.FinishPasskeyRegistrationResponse:
        caller = await signed_in(self._app, request.session_token)
        ceremony_id = passkeys.parse_ceremony_id(request.ceremony_id)
        name = factors.factor_name(request.name)
        view = await passkeys.finish_registration(
            self._app,
            caller,
            ceremony_id=ceremony_id,
            credential_json=request.credential_json,
            name=name,
        )
        return pb.FinishPasskeyRegistrationResponse(factor=factor(view))

    @rpc("BeginPasskeyAssertion")
    async def BeginPasskeyAssertion(
        self, request: pb.BeginPasskeyAssertionRequest, context: Ctx
    ) -> pb.BeginPasskeyAssertionResponse:
        flow_id = validation.flow_id(request.flow_id)
        ip = convert.client_info(request.client).ip_address if request.HasField("client") else ""
        options = await passkey.begin(self._app, flow_id, ip_address=ip or None)
        return pb.BeginPasskeyAssertionResponse(request_options_json=options)

    @rpc("FinishPasskeyAssertion")
    async def FinishPasskeyAssertion(
        self, request: pb.FinishPasskeyAssertionRequest, context: Ctx
    ) -> pb.FinishPasskeyAssertionResponse:
        flow_id = validation.flow_id(request.flow_id)
        client = convert.client_info(request.client)
        result = await passkey.finish(self._app, flow_id, request.credential_json, client)
        if isinstance(result, grants.IssuedGrant):
            metrics.step_up("issued")
            return pb.FinishPasskeyAssertionResponse(
                action_grant=auth_pb.ActionGrant(
                    grant_token=result.token,
                    action=convert.ACTION_TO_PB[result.action],
                    target_account_id=str(result.target_account_id or ""),
                    expire_time=convert.timestamp(result.expires_at),
                )
            )
        if isinstance(result, federated.FederatedLinkResult):
            return pb.FinishPasskeyAssertionResponse(
                federated_link=auth_pb.FederatedLinkResult(
                    account_id=str(result.account_id), issuer=result.issuer, linked=result.linked
                )
            )
        return pb.FinishPasskeyAssertionResponse(
            login=auth_pb.LoginVerification(
                session=convert.session(result.session),
                device_token=result.device_token,
                device_trust_expire_time=convert.timestamp(result.device_trust_expires_at),
            )
        )

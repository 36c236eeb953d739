"""Passkeys in a real browser: Debian's Chromium, headless, driven by Playwright, with a
virtual authenticator (DevTools protocol WebAuthn domain: CTAP2, internal, resident keys, user
verification), on a small page served by the test over HTTP on 127.0.0.1 as
http://localhost:PORT (a secure context). The page's JavaScript calls
navigator.credentials.create()/get() with the options that a relay endpoint (the backend's part,
aiohttp) fetched from the gRPC API, and posts the browser's PublicKeyCredential.toJSON() back
through it: register, log in, step up, then a cloned credential (its counter put back) refused.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select
from support import CLIENT, PASSWORD, Inbox, Seeded, failure_of, sign_in
from support import step_up as grant_for

from authsvc.config import Settings
from authsvc.db import AuditEvent, PasskeyCredential
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2, passkey_service_pb2_grpc
from authsvc.v1 import passkey_service_pb2 as ppb

if TYPE_CHECKING:
    from playwright.async_api import CDPSession, Page

    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

CHROMIUM = os.environ.get("AUTHSVC_TEST_CHROMIUM", "/usr/bin/chromium")

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>passkeys</title>
<script>
async function relay(method, body) {
  const answer = await fetch("/relay/" + method, {
    method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body),
  });
  const json = await answer.json();
  if (!answer.ok) { throw new Error(JSON.stringify(json)); }
  return json;
}
async function register(sessionToken, grantToken) {
  const begun = await relay("BeginPasskeyRegistration", {sessionToken, grantToken});
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(
    JSON.parse(begun.creationOptionsJson));
  const credential = await navigator.credentials.create({publicKey});
  return relay("FinishPasskeyRegistration", {
    sessionToken, ceremonyId: begun.ceremonyId, name: "Chromium",
    credentialJson: JSON.stringify(credential.toJSON()),
  });
}
async function answer(flowId) {
  const begun = await relay("BeginPasskeyAssertion", {flowId});
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(
    JSON.parse(begun.requestOptionsJson));
  const credential = await navigator.credentials.get({publicKey});
  return relay("FinishPasskeyAssertion", {
    flowId, credentialJson: JSON.stringify(credential.toJSON()),
    client: {ipAddress: "203.0.113.7", userAgent: navigator.userAgent},
  });
}
</script>
<p>passkeys test page</p>
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def chromium() -> str:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium package)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: it must be there)")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def page_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, page_port: int) -> Settings:
    return settings.model_copy(
        update={
            "webauthn_rp_id": "localhost",
            "webauthn_origins": [f"http://localhost:{page_port}"],
        }
    )


def relay_app(channel: grpc.aio.Channel) -> web.Application:
    """The backend's part: each POST /relay/<RPC> is that PasskeyService call, JSON in and
    out (the gRPC status and ErrorInfo reason as JSON on failure)."""
    stub = passkey_service_pb2_grpc.PasskeyServiceStub(channel)
    requests: dict[str, type[Any]] = {
        "BeginPasskeyRegistration": ppb.BeginPasskeyRegistrationRequest,
        "FinishPasskeyRegistration": ppb.FinishPasskeyRegistrationRequest,
        "BeginPasskeyAssertion": ppb.BeginPasskeyAssertionRequest,
        "FinishPasskeyAssertion": ppb.FinishPasskeyAssertionRequest,
    }

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def call(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        message = json_format.ParseDict(await request.json(), requests[method]())
        try:
            answer = await getattr(stub, method)(message)
        except grpc.aio.AioRpcError as error:
            reason = ""
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            for detail in status.details if status else []:
                info = error_details_pb2.ErrorInfo()
                if detail.Is(info.DESCRIPTOR):
                    detail.Unpack(info)
                    reason = info.reason
            return web.json_response({"code": error.code().name, "reason": reason}, status=400)
        return web.json_response(json_format.MessageToDict(answer))

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/relay/{method}", call)
    return app


@pytest.fixture
async def page_url(channel: grpc.aio.Channel, page_port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(relay_app(channel))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", page_port)
    await site.start()
    yield f"http://localhost:{page_port}/"
    await runner.cleanup()


async def login_flow(stub: Stub, who: Seeded) -> str:
    answer = await stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=who.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        )
    )
    return answer.pending_flow.flow_id


async def in_page(page: Page, script: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(script, list(args))
    return result


async def refused_in_page(page: Page, script: str, *args: str) -> dict[str, Any]:
    """The relay's JSON error of a call the page made (the page's promise rejects with it)."""
    message: str = await page.evaluate(
        f"args => ({script})(...args).then(() => 'resolved', e => e.message)", list(args)
    )
    assert message != "resolved"
    refused: dict[str, Any] = json.loads(message)
    return refused


async def counters(server: Server) -> list[int]:
    async with server.app.read() as db:
        return list((await db.scalars(select(PasskeyCredential.sign_count))).all())


async def test_register_log_in_step_up_and_refuse_a_clone_in_chromium(
    chromium: str,
    page_url: str,
    stub: Stub,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
) -> None:
    from playwright.async_api import async_playwright

    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--host-resolver-rules=MAP localhost 127.0.0.1"],
        )
        try:
            page = await browser.new_page()
            cdp: CDPSession = await page.context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable", {"enableUI": False})
            added = await cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            authenticator = added["authenticatorId"]
            await page.goto(page_url)
            assert await page.evaluate("window.isSecureContext") is True

            registered = await in_page(
                page, "([s, g]) => register(s, g)", session, grant.grant_token
            )
            assert registered["factor"]["kind"] == "FACTOR_KIND_PASSKEY"
            held = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))[
                "credentials"
            ]
            assert len(held) == 1 and held[0]["rpId"] == "localhost"
            async with server.app.read() as db:
                stored_id = await db.scalar(select(PasskeyCredential.credential_id))
            assert stored_id == base64.b64decode(held[0]["credentialId"])

            # Log in with it: the session is real.
            logged_in = await in_page(page, "([f]) => answer(f)", await login_flow(stub, alice))
            new_session = logged_in["login"]["session"]["token"]
            check = await stub.ValidateSession(pb.ValidateSessionRequest(session_token=new_session))
            assert check.account_id == str(alice.account_id)

            # Step up with it: the grant of the action asked for.
            flow = (
                await stub.AuthorizeSensitiveAction(
                    pb.AuthorizeSensitiveActionRequest(
                        session_token=new_session,
                        action=common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
                        new_values=pb.ActionValues(),
                        client=CLIENT,
                    )
                )
            ).pending_flow.flow_id
            stepped = await in_page(page, "([f]) => answer(f)", flow)
            assert stepped["actionGrant"]["action"] == "SENSITIVE_ACTION_CHANGE_OWN_PASSWORD"

            # The authenticator's counter and the stored one agree, and moved at each use.
            held = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))[
                "credentials"
            ]
            stored = await counters(server)
            assert stored == [held[0]["signCount"]] and stored[0] >= 2

            # A clone: the same private key in an authenticator whose counter starts again.
            credential = held[0]
            await cdp.send(
                "WebAuthn.removeCredential",
                {"authenticatorId": authenticator, "credentialId": credential["credentialId"]},
            )
            await cdp.send(
                "WebAuthn.addCredential",
                {
                    "authenticatorId": authenticator,
                    "credential": {
                        "credentialId": credential["credentialId"],
                        "isResidentCredential": credential["isResidentCredential"],
                        "rpId": credential["rpId"],
                        "privateKey": credential["privateKey"],
                        "userHandle": credential["userHandle"],
                        "signCount": 0,
                    },
                },
            )
            refused = await refused_in_page(page, "f => answer(f)", await login_flow(stub, alice))
            assert refused == {"code": "PERMISSION_DENIED", "reason": "PASSKEY_CLONED"}
            assert await counters(server) == stored  # nothing stored for the clone
        finally:
            await browser.close()
    async with server.app.read() as db:
        clones = (
            await db.scalars(
                select(AuditEvent.outcome).where(AuditEvent.event_type == "passkey.clone_detected")
            )
        ).all()
    assert clones == ["PASSKEY_CLONED"]
    # Disabled by the detection, and the sessions it may have opened revoked.
    async with server.app.read() as db:
        assert await db.scalar(select(PasskeyCredential.disabled_at)) is not None
    gone = await failure_of(
        stub.ValidateSession(pb.ValidateSessionRequest(session_token=new_session))
    )
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED

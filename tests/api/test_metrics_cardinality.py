"""Metrics over real gRPC and a real /metrics scrape: a full flow (logins, codes, step-up,
refusals, a lockout, a rate limit) moves the counters it should, and every label value of
every series is one of the finite sets the code defines: no account, login, organisation,
phone number, IP or token ever becomes a label."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    CLIENT,
    MOBILE,
    PASSWORD,
    SIRET,
    TEST_API_KEY,
    Inbox,
    Seeded,
    aio_channel,
    failure_of,
    seed_account,
    sign_in,
    step_up,
)

from authsvc import metrics
from authsvc.clock import FrozenClock
from authsvc.config import Rate, RateLimits, Settings
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def metered(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    limits = RateLimits(login_ip=Rate(count=3, period_s=600))
    server = await create_server(
        settings.model_copy(update={"metrics_listen": "127.0.0.1:0", "rate_limits": limits}),
        clock=clock,
        listen="127.0.0.1:0",
    )
    await server.start()
    yield server
    await server.stop(grace=0)
    assert not metrics.state.on  # recording stops with the server that served it


def scrape(server: Server) -> Series:
    assert server.metrics_http is not None
    body = httpx.get(f"http://127.0.0.1:{server.metrics_http.port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def login(siret: str, account: str, password: str, ip: str) -> pb.LoginRequest:
    return pb.LoginRequest(
        organization_siret=siret,
        login=account,
        password=pb.PasswordCredential(password=password),
        client=common_pb2.ClientContext(ip_address=ip, user_agent="pytest"),
    )


async def test_a_full_flow_counts_and_labels_stay_in_their_sets(
    metered: Server, settings: Settings
) -> None:
    inbox = Inbox(settings.outbox_file)
    alice = await seed_account(metered, login="alice")
    bob = await seed_account(metered, login="bob", phone="+33611112222")
    before = scrape(metered)
    secrets: set[str] = {SIRET, "alice", "bob", MOBILE, "+33611112222", TEST_API_KEY}
    secrets |= {str(alice.account_id), str(bob.account_id), CLIENT.ip_address}
    async with aio_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        # A full login (password, code, verify), a step-up with its grant redeemed once.
        verified = await sign_in(stub, inbox, alice)
        session = verified.session.token
        secrets |= {session, verified.device_token}
        await stub.ValidateSession(pb.ValidateSessionRequest(session_token=session, client=CLIENT))
        grant = await step_up(stub, inbox, session, common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
        secrets.add(grant.grant_token)
        redeem = pb.RedeemActionGrantRequest(
            session_token=session,
            grant_token=grant.grant_token,
            action=common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
            client=CLIENT,
        )
        await stub.RedeemActionGrant(redeem)
        reused = await failure_of(stub.RedeemActionGrant(redeem))
        # The trusted device: the next login needs no code.
        again = login(SIRET, "alice", PASSWORD, "203.0.113.50")
        again.device_token = verified.device_token
        assert (await stub.Login(again)).WhichOneof("result") == "session"
        # A wrong code, then bob's wrong passwords up to his lock (each from its own network).
        pending = (await stub.Login(login(SIRET, "alice", PASSWORD, "203.0.113.51"))).pending_flow
        await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
        code = await inbox.code_to(MOBILE)
        wrong = "000000" if code != "000000" else "111111"
        mismatch = await failure_of(
            stub.Verify(pb.VerifyRequest(flow_id=pending.flow_id, code=wrong, client=CLIENT))
        )
        outcomes = [
            (await failure_of(stub.Login(login(SIRET, "bob", "wrong", f"198.51.100.{i}")))).reason
            for i in range(1, settings.password_lock_threshold + 2)
        ]
        # One network past its login budget (3 in the fixture); unknown logins cost nobody.
        limited = [
            (await failure_of(stub.Login(login(SIRET, f"nobody{i}", "x", "192.0.2.9")))).reason
            for i in range(5)
        ]
        # A caller without a valid key, and a flow that does not exist.
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}")
        try:
            denied = await failure_of(
                auth_service_pb2_grpc.AuthServiceStub(plain).ValidateSession(
                    pb.ValidateSessionRequest(session_token=session, client=CLIENT)
                )
            )
        finally:
            await plain.close(None)
        missing = await failure_of(
            stub.Verify(pb.VerifyRequest(flow_id=str(uuid.uuid4()), code="123456", client=CLIENT))
        )
    assert reused.reason == "GRANT_ALREADY_USED" and mismatch.reason == "CODE_MISMATCH"
    assert outcomes[-2:] == ["ACCOUNT_LOCKED", "ACCOUNT_LOCKED"], outcomes
    assert limited.count("RATE_LIMITED") == 2, limited
    assert denied.reason == "PERMISSION_DENIED" and missing.reason == "FLOW_NOT_FOUND"

    after = scrape(metered)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "authsvc_rpc_requests_total"
    # Logins: alice 3, bob threshold + 1, the flooded network 5.
    assert delta(requests, method="Login", code="OK", reason="") == 3
    assert (
        delta(requests, method="Login", code="UNAUTHENTICATED", reason="INVALID_CREDENTIALS")
        == settings.password_lock_threshold - 1 + 3
    )
    assert delta(requests, method="Login", code="RESOURCE_EXHAUSTED", reason="RATE_LIMITED") == 2
    assert delta(requests, method="Verify", code="OK", reason="") == 2
    assert delta(requests, method="Verify", code="UNAUTHENTICATED", reason="CODE_MISMATCH") == 1
    assert delta(requests, method="Verify", code="NOT_FOUND", reason="FLOW_NOT_FOUND") == 1
    assert (
        delta(
            requests,
            method="ValidateSession",
            code="PERMISSION_DENIED",
            reason="PERMISSION_DENIED",
        )
        == 1
    )
    assert delta("authsvc_rpc_duration_seconds_count", method="Verify") == 4
    assert value(after, "authsvc_rpc_in_flight", method="Login") == 0
    assert delta("authsvc_first_factor_total", credential="password", outcome="code_needed") == 2
    assert delta("authsvc_first_factor_total", credential="password", outcome="session") == 1
    assert delta("authsvc_codes_issued_total", channel="sms", purpose="login") == 2
    assert delta("authsvc_codes_issued_total", channel="sms", purpose="step_up") == 1
    assert delta("authsvc_verify_total", outcome="verified", detail="login") == 1
    assert delta("authsvc_verify_total", outcome="verified", detail="step_up") == 1
    assert delta("authsvc_verify_total", outcome="refused", detail="CODE_MISMATCH") == 1
    for stage, reason in (("requested", ""), ("issued", ""), ("redeemed", "")):
        assert delta("authsvc_step_up_grants_total", stage=stage, reason=reason) == 1
    assert delta("authsvc_step_up_grants_total", stage="refused", reason="GRANT_ALREADY_USED") == 1
    assert delta("authsvc_lockouts_total", factor="password") == 1
    assert delta("authsvc_rate_limit_refusals_total", limit="login.ip") == 2
    # Every argon2 check waited for a thread and none is left in the queue: alice's 3, bob's
    # until his lock (the locked login's check is refused before argon2), the network's 3.
    checks = 3 + settings.password_lock_threshold + 3
    assert delta("authsvc_password_hash_wait_seconds_count", operation="verify") == checks
    assert value(after, "authsvc_password_hash_queue", operation="verify") == 0
    dialect = metered.app.engine.dialect.name
    assert value(after, "authsvc_db_connections_checked_out", dialect=dialect) >= 0
    # The dispatcher (in this process) sent the three codes through the file provider, and
    # the notice of a wrong code after a right password by email.
    sent = {"provider": "file", "outcome": "sent"}
    assert delta("authsvc_deliveries_total", channel="sms", kind="code", **sent) == 3
    await inbox.wait_for(4)
    after = scrape(metered)
    assert delta("authsvc_deliveries_total", channel="email", kind="notice", **sent) == 1
    assert delta("authsvc_provider_send_duration_seconds_count", provider="file") == 4

    allowed = metrics.label_values()
    ours = [key for key in after if key[0].startswith("authsvc_")]
    assert len(ours) > 40
    for name, labels in ours:
        for label, label_value in labels:
            if label == "le":
                continue
            assert label in allowed, (name, label)
            assert label_value in allowed[label], (name, label, label_value)
            assert label_value not in secrets, (name, label)
    # The sets are finite and small: the whole product bounds the series of the service.
    assert all(len(values) < 100 for values in allowed.values())


async def test_nothing_is_recorded_without_a_metrics_listener(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded
) -> None:
    assert not metrics.state.on
    refused = metrics.RPC_REQUESTS.labels("Login", "UNAUTHENTICATED", "INVALID_CREDENTIALS")
    counted = refused._value.get()
    wrong = await failure_of(
        stub.Login(login(alice.organization_siret, alice.login, "wrong", "192.0.2.77"))
    )
    assert wrong.reason == "INVALID_CREDENTIALS"
    assert refused._value.get() == counted

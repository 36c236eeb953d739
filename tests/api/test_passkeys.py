"""Passkeys (WebAuthn) as a second factor, over real gRPC on SQLite and PostgreSQL, answered by
a software authenticator (tests/passkey_authenticator.py: a real ES256 key, real bytes)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from passkey_authenticator import AT, UP, UV, SoftAuthenticator, b64url
from sqlalchemy import func, select
from support import (
    CLIENT,
    PASSWORD,
    Inbox,
    Seeded,
    failure_of,
    open_step_up,
    seed_account,
    sign_in,
    waiting_on_locks,
)
from support import step_up as grant_for

from authsvc.clock import FrozenClock
from authsvc.config import Rate, RateLimits, Settings
from authsvc.db import (
    Account,
    ActionGrant,
    AuditEvent,
    OutboxMessage,
    PasskeyCeremony,
    PasskeyCredential,
    Role,
    Session,
    TrustedDevice,
)
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2, factor_service_pb2_grpc, passkey_service_pb2_grpc
from authsvc.v1 import factor_service_pb2 as fpb
from authsvc.v1 import passkey_service_pb2 as ppb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub
    from authsvc.v1.factor_service_pb2_grpc import FactorServiceAsyncStub as Factors
    from authsvc.v1.passkey_service_pb2_grpc import PasskeyServiceAsyncStub as Passkeys

ENROLL = common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR
REMOVE = common_pb2.SENSITIVE_ACTION_REMOVE_FACTOR
CHANGE_PASSWORD = common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD
ADMIN_PHONE = "+33698765432"
OTHER_ADMIN_PHONE = "+33687654321"
OTHER_SIRET = "73282932000074"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    roomy = Rate(count=1000, period_s=60)
    return settings.model_copy(
        update={
            "rate_limits": RateLimits(
                verify_account=roomy, step_up_account=roomy, login_account=roomy
            ),
            "webauthn_rp_id": "localhost",
            "webauthn_origins": ["http://localhost"],
        }
    )


@pytest.fixture
async def passkeys(channel: grpc.aio.Channel) -> AsyncIterator[Passkeys]:
    yield passkey_service_pb2_grpc.PasskeyServiceStub(channel)


@pytest.fixture
async def factors(channel: grpc.aio.Channel) -> AsyncIterator[Factors]:
    yield factor_service_pb2_grpc.FactorServiceStub(channel)


async def register(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, session: str, device: SoftAuthenticator
) -> fpb.Factor:
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    finished = await passkeys.FinishPasskeyRegistration(
        ppb.FinishPasskeyRegistrationRequest(
            session_token=session,
            ceremony_id=begun.ceremony_id,
            credential_json=device.create(begun.creation_options_json),
            name="Laptop",
        )
    )
    return finished.factor


async def login_flow(stub: Stub, who: Seeded) -> common_pb2.PendingFlow:
    answer = await stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=who.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        )
    )
    return answer.pending_flow


async def begin(passkeys: Passkeys, flow_id: str) -> str:
    begun = await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow_id))
    return begun.request_options_json


def finish(
    passkeys: Passkeys, flow_id: str, credential_json: str
) -> grpc.aio.UnaryUnaryCall[ppb.FinishPasskeyAssertionRequest, ppb.FinishPasskeyAssertionResponse]:
    return passkeys.FinishPasskeyAssertion(
        ppb.FinishPasskeyAssertionRequest(
            flow_id=flow_id, credential_json=credential_json, client=CLIENT
        )
    )


async def audit_rows(server: Server, event_type: str) -> list[tuple[str, dict[str, str]]]:
    async with server.app.read() as db:
        rows = (
            await db.execute(
                select(AuditEvent.outcome, AuditEvent.details)
                .where(AuditEvent.event_type == event_type)
                .order_by(AuditEvent.sequence)
            )
        ).all()
    return [(outcome, json.loads(details)) for outcome, details in rows]


async def security_epoch(server: Server, who: Seeded) -> int:
    async with server.app.read() as db:
        epoch = await db.scalar(select(Account.security_epoch).where(Account.id == who.account_id))
    assert epoch is not None
    return int(epoch)


async def credentials_of(server: Server, who: Seeded) -> int:
    async with server.app.read() as db:
        counted = await db.scalar(
            select(func.count())
            .select_from(PasskeyCredential)
            .where(PasskeyCredential.account_id == who.account_id)
        )
    return int(counted or 0)


async def ceremonies_of(server: Server, who: Seeded) -> int:
    async with server.app.read() as db:
        counted = await db.scalar(
            select(func.count())
            .select_from(PasskeyCeremony)
            .where(PasskeyCeremony.account_id == who.account_id)
        )
    return int(counted or 0)


async def stored_counter(server: Server) -> int:
    async with server.app.read() as db:
        counter = await db.scalar(select(PasskeyCredential.sign_count))
    assert counter is not None
    return int(counter)


def of(factor_id: str) -> pb.ActionValues:
    """The values of a REMOVE_FACTOR grant: the factor it removes."""
    return pb.ActionValues(factor_id=factor_id)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError(error)


async def emails_to(inbox: Inbox, address: str, count: int) -> list[str]:
    """The texts of the first `count` messages to `address`, once delivered (whatever else
    the inbox's readers consumed meanwhile)."""
    for _ in range(1000):  # a hang guard (10 s), not a measurement
        texts = [m["text"] for m in inbox.messages() if m["to"] == address]
        if len(texts) >= count:
            return texts[:count]
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} messages to {address}")


def phone_messages(inbox: Inbox) -> int:
    return sum(message["channel"] in ("sms", "voice") for message in inbox.messages())


# ---- registration, login, step-up -----------------------------------------------------------


async def test_register_then_log_in_then_step_up(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    no_grant = await failure_of(
        passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(session_token=session)
        )
    )
    assert no_grant.reason == "GRANT_REQUIRED"
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    options = json.loads(begun.creation_options_json)
    assert options["rp"]["id"] == "localhost"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["user"]["id"] == b64url(alice.account_id.bytes)
    device = SoftAuthenticator()
    finished = await passkeys.FinishPasskeyRegistration(
        ppb.FinishPasskeyRegistrationRequest(
            session_token=session,
            ceremony_id=begun.ceremony_id,
            credential_json=device.create(begun.creation_options_json),
            name="Laptop",
        )
    )
    assert (finished.factor.kind, finished.factor.name) == (fpb.FACTOR_KIND_PASSKEY, "Laptop")
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert [(f.factor_id, f.kind) for f in listed.factors] == [
        (finished.factor.factor_id, fpb.FACTOR_KIND_PASSKEY)
    ]
    # The grant was spent by the registration.
    again = await failure_of(
        passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(
                session_token=session, grant_token=grant.grant_token
            )
        )
    )
    assert again.reason == "GRANT_ALREADY_USED"

    # Login: the passkey answers the second factor; nothing is sent to the phone.
    sent_before = phone_messages(inbox)
    flow = await login_flow(stub, alice)
    request_options = json.loads(await begin(passkeys, flow.flow_id))
    assert request_options["userVerification"] == "required"
    assert [c["id"] for c in request_options["allowCredentials"]] == [b64url(device.credential_id)]
    logged_in = await finish(passkeys, flow.flow_id, device.get(json.dumps(request_options)))
    check = await stub.ValidateSession(
        pb.ValidateSessionRequest(session_token=logged_in.login.session.token)
    )
    assert check.account_id == str(alice.account_id)
    assert logged_in.login.device_token
    assert await stored_counter(server) == 1

    # Step-up: the grant is the usual one, bound to the session and action.
    new_session = logged_in.login.session.token
    up = (
        await stub.AuthorizeSensitiveAction(
            pb.AuthorizeSensitiveActionRequest(
                session_token=new_session,
                action=CHANGE_PASSWORD,
                new_values=pb.ActionValues(),
                client=CLIENT,
            )
        )
    ).pending_flow
    stepped = await finish(passkeys, up.flow_id, device.get(await begin(passkeys, up.flow_id)))
    assert stepped.action_grant.action == CHANGE_PASSWORD
    redeemed = await stub.RedeemActionGrant(
        pb.RedeemActionGrantRequest(
            session_token=new_session,
            grant_token=stepped.action_grant.grant_token,
            action=CHANGE_PASSWORD,
            new_values=pb.ActionValues(),
            client=CLIENT,
        )
    )
    assert redeemed.account_id == str(alice.account_id)
    assert await stored_counter(server) == 2
    assert phone_messages(inbox) == sent_before

    used = [d for _, d in await audit_rows(server, "code.verified") if d.get("channel")]
    assert [(d["channel"], d["factor_id"]) for d in used] == [
        ("passkey", finished.factor.factor_id)
    ] * 2
    assert [o for o, _ in await audit_rows(server, "factor.confirmed")] == ["OK"]
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=new_session))
    assert listed.factors[0].HasField("last_use_time")


async def test_registration_requires_user_verification_and_the_right_origin(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    for flags, origin in ((UP | AT, None), (UP | UV | AT, "http://evil.localhost.example")):
        grant = await grant_for(stub, inbox, session, ENROLL)
        begun = await passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(
                session_token=session, grant_token=grant.grant_token
            )
        )
        refused = await failure_of(
            passkeys.FinishPasskeyRegistration(
                ppb.FinishPasskeyRegistrationRequest(
                    session_token=session,
                    ceremony_id=begun.ceremony_id,
                    credential_json=SoftAuthenticator().create(
                        begun.creation_options_json, flags=flags, origin=origin
                    ),
                    name="Laptop",
                )
            )
        )
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "PASSKEY_REJECTED",
        )
    async with server.app.read() as db:
        assert await db.scalar(select(PasskeyCredential.id)) is None
    assert [o for o, _ in await audit_rows(server, "factor.confirmation_failed")] == [
        "PASSKEY_REJECTED"
    ] * 2


# ---- clones, replays, wrong answers -----------------------------------------------------------


async def test_a_clone_disables_the_passkey_and_ends_the_trust_resting_on_it(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """A copy of the key answers with a counter that does not move forward: refused, and in the
    same decision the passkey is disabled (it answers no flow, ListFactors shows it disabled),
    the account's security epoch raised, its pending flows failed (the clone's own too), its
    devices and every session revoked (one may be the copy's), the holder told by email."""
    sms_session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    factor = await register(stub, passkeys, inbox, sms_session, device)
    copy = device.clone()
    flow = await login_flow(stub, alice)
    genuine = await finish(
        passkeys, flow.flow_id, device.get(await begin(passkeys, flow.flow_id), counter=5)
    )
    assert await stored_counter(server) == 5
    epoch_before = await security_epoch(server, alice)
    waiting = await login_flow(stub, alice)  # another pending flow, opened with the password
    flow = await login_flow(stub, alice)
    refused = await failure_of(
        finish(passkeys, flow.flow_id, copy.get(await begin(passkeys, flow.flow_id), counter=3))
    )
    assert (refused.code, refused.reason, refused.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PASSKEY_CLONED",
        {},
    )
    assert await stored_counter(server) == 5  # nothing stored for the clone
    assert await security_epoch(server, alice) == epoch_before + 1
    for token in (sms_session, genuine.login.session.token):
        gone = await failure_of(
            stub.ValidateSession(pb.ValidateSessionRequest(session_token=token))
        )
        assert gone.code == grpc.StatusCode.UNAUTHENTICATED
    async with server.app.read() as db:
        devices = (
            await db.scalars(
                select(TrustedDevice.revoked_at).where(TrustedDevice.account_id == alice.account_id)
            )
        ).all()
    assert devices and all(revoked is not None for revoked in devices)
    for ended in (flow, waiting):
        dead = await failure_of(begin(passkeys, ended.flow_id))
        assert dead.reason == "FLOW_FAILED"
    # The holder hears of it (after the registration's notice): which passkey, nothing of
    # the credential.
    texts = await emails_to(inbox, f"{alice.login}@example.fr", 2)
    assert sum("a été ajoutée" in text for text in texts) == 1
    notice = next(m for m in inbox.messages() if "copie" in m["text"])
    assert "Laptop" in notice["text"] and "copie" in notice["text"]
    assert b64url(device.credential_id) not in json.dumps(notice)
    # Disabled: no flow offers it (alice has no other passkey), ListFactors shows it.
    flow = await login_flow(stub, alice)
    assert (await failure_of(begin(passkeys, flow.flow_id))).reason == "CHANNEL_NOT_AVAILABLE"
    session = (await sign_in(stub, inbox, alice)).session.token
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert [(f.factor_id, f.HasField("disable_time")) for f in listed.factors] == [
        (factor.factor_id, True)
    ]
    clones = await audit_rows(server, "passkey.clone_detected")
    assert [(o, d["factor_id"], d["stored_sign_count"], d["sign_count"]) for o, d in clones] == [
        ("PASSKEY_CLONED", factor.factor_id, "5", "3")
    ]
    assert [(d["factor_id"], d["disabled"]) for _, d in clones] == [(factor.factor_id, "now")]
    disabled = await audit_rows(server, "factor.disabled")
    assert [(o, d["factor_id"], d["kind"]) for o, d in disabled] == [
        ("PASSKEY_CLONED", factor.factor_id, "passkey")
    ]
    assert disabled[0][1]["sessions_revoked"] == "2"
    # The holder removes it (the grant names it); its row went, the audit trail stays.
    grant = await grant_for(stub, inbox, session, REMOVE, values=of(factor.factor_id))
    await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=session, grant_token=grant.grant_token, factor_id=factor.factor_id
        )
    )
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert list(listed.factors) == []
    assert len(await audit_rows(server, "passkey.clone_detected")) == 1


async def test_a_clone_on_a_step_up_disables_the_passkey_too(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """The counter not moving forward on a step-up: no grant, the step-up's session revoked,
    and the genuine authenticator no longer completes anything with that passkey."""
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    await register(stub, passkeys, inbox, session, device)
    copy = device.clone()
    flow = await login_flow(stub, alice)
    await finish(passkeys, flow.flow_id, device.get(await begin(passkeys, flow.flow_id)))
    up = (
        await stub.AuthorizeSensitiveAction(
            pb.AuthorizeSensitiveActionRequest(
                session_token=session,
                action=CHANGE_PASSWORD,
                new_values=pb.ActionValues(),
                client=CLIENT,
            )
        )
    ).pending_flow
    options = await begin(passkeys, up.flow_id)
    refused = await failure_of(finish(passkeys, up.flow_id, copy.get(options, counter=1)))
    assert refused.reason == "PASSKEY_CLONED"
    gone = await failure_of(stub.ValidateSession(pb.ValidateSessionRequest(session_token=session)))
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED
    async with server.app.read() as db:
        assert await db.scalar(select(PasskeyCredential.disabled_at)) is not None
        grants_issued = await db.scalar(select(func.count()).select_from(ActionGrant))
    assert grants_issued == 1  # the registration's own, none for the clone
    # The genuine key, on a new flow whose options still name it? None do: it is disabled.
    flow = await login_flow(stub, alice)
    assert (await failure_of(begin(passkeys, flow.flow_id))).reason == "CHANNEL_NOT_AVAILABLE"


async def test_a_counterless_authenticator_stays_at_zero(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    await register(stub, passkeys, inbox, session, device)
    for _ in range(2):
        flow = await login_flow(stub, alice)
        answer = device.get(await begin(passkeys, flow.flow_id), counter=0)
        assert (await finish(passkeys, flow.flow_id, answer)).login.session.token
    assert await stored_counter(server) == 0


async def test_a_replayed_challenge_is_refused(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    # Registration: the same answer twice.
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    request = ppb.FinishPasskeyRegistrationRequest(
        session_token=session,
        ceremony_id=begun.ceremony_id,
        credential_json=device.create(begun.creation_options_json),
        name="Laptop",
    )
    await passkeys.FinishPasskeyRegistration(request)
    replayed = await failure_of(passkeys.FinishPasskeyRegistration(request))
    assert (replayed.code, replayed.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "PASSKEY_CEREMONY_INVALID",
    )
    # Assertion: a refused answer uses the ceremony up; a right one on it then is refused too.
    flow = await login_flow(stub, alice)
    options = await begin(passkeys, flow.flow_id)
    other_key = ec.generate_private_key(ec.SECP256R1())
    bad = await failure_of(finish(passkeys, flow.flow_id, device.get(options, signer=other_key)))
    assert (bad.reason, bad.metadata) == ("PASSKEY_REJECTED", {"attempts_remaining": "4"})
    late = await failure_of(finish(passkeys, flow.flow_id, device.get(options)))
    assert late.reason == "PASSKEY_CEREMONY_INVALID"
    # An answer to an earlier challenge of the flow, after a new Begin: refused (signed over
    # the old challenge), and counted.
    old = device.get(options)
    await begin(passkeys, flow.flow_id)
    stale = await failure_of(finish(passkeys, flow.flow_id, old))
    assert (stale.reason, stale.metadata) == ("PASSKEY_REJECTED", {"attempts_remaining": "3"})
    # A code cannot answer a passkey challenge.
    code = await failure_of(
        stub.Verify(pb.VerifyRequest(flow_id=flow.flow_id, code="123456", client=CLIENT))
    )
    assert code.reason == "NO_ACTIVE_CHALLENGE"


async def test_wrong_assertions_lock_the_factor_like_wrong_codes(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    await register(stub, passkeys, inbox, session, device)
    settings = server.app.settings
    other_key = ec.generate_private_key(ec.SECP256R1())
    reasons: list[str] = []
    while len(reasons) < settings.code_lock_threshold:
        flow = await login_flow(stub, alice)
        for _ in range(settings.max_code_attempts):
            options = await begin(passkeys, flow.flow_id)
            failure = await failure_of(
                finish(passkeys, flow.flow_id, device.get(options, signer=other_key))
            )
            reasons.append(failure.reason)
            if len(reasons) == settings.code_lock_threshold:
                break
        else:
            dead = await failure_of(begin(passkeys, flow.flow_id))
            assert dead.reason == "FLOW_FAILED"
    assert reasons[:-1] == ["PASSKEY_REJECTED"] * (settings.code_lock_threshold - 1)
    assert reasons[-1] == "ACCOUNT_LOCKED"
    flow = await login_flow(stub, alice)
    locked = await failure_of(begin(passkeys, flow.flow_id))
    assert locked.reason == "ACCOUNT_LOCKED"


async def test_bad_json_is_invalid_argument_and_changes_nothing(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    device = SoftAuthenticator()
    good = json.loads(device.create(begun.creation_options_json))
    bad_answers = [
        "",
        "not json",
        "[]",
        "{}",
        json.dumps({**good, "rawId": 5}),
        json.dumps({**good, "response": {"clientDataJSON": "x"}}),
        json.dumps({**good, "type": "password"}),
        "x" * 20_000,
    ]
    for bad in bad_answers:
        failure = await failure_of(
            passkeys.FinishPasskeyRegistration(
                ppb.FinishPasskeyRegistrationRequest(
                    session_token=session,
                    ceremony_id=begun.ceremony_id,
                    credential_json=bad,
                    name="Laptop",
                )
            )
        )
        assert (failure.code, failure.reason, failure.metadata) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            {"field": "credential_json"},
        ), bad[:40]
    for field, request in (
        ("ceremony_id", ppb.FinishPasskeyRegistrationRequest(session_token=session, name="L")),
        (
            "name",
            ppb.FinishPasskeyRegistrationRequest(
                session_token=session, ceremony_id=begun.ceremony_id, name=""
            ),
        ),
    ):
        failure = await failure_of(passkeys.FinishPasskeyRegistration(request))
        assert (failure.reason, failure.metadata) == ("INVALID_FIELD", {"field": field})
    # Nothing was used up: the ceremony still takes the right answer.
    finished = await passkeys.FinishPasskeyRegistration(
        ppb.FinishPasskeyRegistrationRequest(
            session_token=session,
            ceremony_id=begun.ceremony_id,
            credential_json=json.dumps(good),
            name="Laptop",
        )
    )
    assert finished.factor.kind == fpb.FACTOR_KIND_PASSKEY

    flow = await login_flow(stub, alice)
    options = await begin(passkeys, flow.flow_id)
    for bad in ("", "{", json.dumps({"id": "AA", "rawId": "AA", "type": "public-key"})):
        failure = await failure_of(finish(passkeys, flow.flow_id, bad))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
    bad_flow = await failure_of(
        passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id="nope"))
    )
    assert bad_flow.reason == "INVALID_FIELD"
    # Not counted, not consumed: the right answer still completes the flow.
    assert (await finish(passkeys, flow.flow_id, device.get(options))).login.session.token
    assert [o for o, d in await audit_rows(server, "code.failed") if d.get("channel")] == []


async def test_the_holder_removes_a_passkey(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    first = await register(stub, passkeys, inbox, session, SoftAuthenticator())
    second = await register(stub, passkeys, inbox, session, SoftAuthenticator())
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    # Oldest first; the frozen clock gives both one time, then the id decides.
    assert [f.factor_id for f in listed.factors] == sorted([first.factor_id, second.factor_id])
    grant = await grant_for(stub, inbox, session, REMOVE, values=of(first.factor_id))
    removed = await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=session, grant_token=grant.grant_token, factor_id=first.factor_id
        )
    )
    assert removed.revoked_sessions == 0  # only the calling session was open
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert [f.factor_id for f in listed.factors] == [second.factor_id]
    # Each registration told the holder, and the removal (in the dispatcher's order).
    texts = await emails_to(inbox, f"{alice.login}@example.fr", 3)
    assert sorted("ajoutée" if "a été ajoutée" in t else "retirée" for t in texts) == [
        "ajoutée",
        "ajoutée",
        "retirée",
    ]


async def test_one_counter_on_many_flows_at_once_exactly_one_wins(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """Ten assertions carrying the same counter (one key in several places), each on its own
    flow, at once: those that read the counter before the winner stored it are stopped by the
    conditional UPDATE in their completion (undone whole), the later ones by the check before
    it. Exactly one session is opened, and the first loser's clone detection then disables the
    passkey and revokes it (once: one disabling, one email)."""
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    await register(stub, passkeys, inbox, session, device)
    flows = [await login_flow(stub, alice) for _ in range(10)]
    answers = [device.get(await begin(passkeys, flow.flow_id), counter=7) for flow in flows]
    outcomes = await asyncio.gather(
        *(
            finish(passkeys, flow.flow_id, answer)
            for flow, answer in zip(flows, answers, strict=True)
        ),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, ppb.FinishPasskeyAssertionResponse)]
    assert len(won) == 1
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(lost) == 9
    # A loser that got as far as the counter: PASSKEY_CLONED; one that came after the
    # disabling finds its flow failed or the passkey gone (never an internal error).
    reasons = [reason_of(error) for error in lost]
    assert "PASSKEY_CLONED" in reasons
    assert set(reasons) <= {"PASSKEY_CLONED", "FLOW_FAILED", "PASSKEY_REJECTED"}, reasons
    assert await stored_counter(server) == 7
    async with server.app.read() as db:
        sessions = await db.scalar(
            select(func.count()).select_from(Session).where(Session.account_id == alice.account_id)
        )
        alive = await db.scalar(
            select(func.count())
            .select_from(Session)
            .where(Session.account_id == alice.account_id, Session.revoked_at.is_(None))
        )
    assert (sessions, alive) == (2, 0)  # the SMS sign-in's and the one winner's, both revoked
    assert len(await audit_rows(server, "factor.disabled")) == 1
    clones = await audit_rows(server, "passkey.clone_detected")
    assert [d["disabled"] for _, d in clones].count("now") == 1
    async with server.app.read() as db:
        notices = await db.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.template == "passkey_cloned")
        )
    assert notices == 1


async def test_passkeys_are_off_without_origins(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    server.app.settings = server.app.settings.model_copy(update={"webauthn_origins": []})
    flow = await login_flow(stub, alice)
    off = await failure_of(begin(passkeys, flow.flow_id))
    assert (off.code, off.reason) == (grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED")
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    off = await failure_of(
        passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(
                session_token=session, grant_token=grant.grant_token
            )
        )
    )
    assert off.reason == "NOT_IMPLEMENTED"


async def test_an_administrator_removes_a_members_passkey(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    alice_session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    factor = await register(stub, passkeys, inbox, alice_session, device)
    target = str(alice.account_id)
    outsider = await seed_account(
        server, login="olga", phone=OTHER_ADMIN_PHONE, siret=OTHER_SIRET, role=Role.ADMIN
    )
    outsider_session = (await sign_in(stub, inbox, outsider, phone=OTHER_ADMIN_PHONE)).session.token
    own_grant = await grant_for(
        stub, inbox, outsider_session, REMOVE, values=of(factor.factor_id), phone=OTHER_ADMIN_PHONE
    )
    foreign = await failure_of(
        factors.RemoveFactor(
            fpb.RemoveFactorRequest(
                session_token=outsider_session,
                grant_token=own_grant.grant_token,
                factor_id=factor.factor_id,
                account_id=target,
            )
        )
    )
    assert foreign.reason == "PERMISSION_DENIED"
    # Another member naming alice's passkey as their own: not found, the grant not spent.
    bob = await seed_account(server, login="bob", phone=ADMIN_PHONE)
    bob_session = (await sign_in(stub, inbox, bob, phone=ADMIN_PHONE)).session.token
    bob_grant = await grant_for(
        stub, inbox, bob_session, REMOVE, values=of(factor.factor_id), phone=ADMIN_PHONE
    )
    not_theirs = await failure_of(
        factors.RemoveFactor(
            fpb.RemoveFactorRequest(
                session_token=bob_session,
                grant_token=bob_grant.grant_token,
                factor_id=factor.factor_id,
            )
        )
    )
    assert (not_theirs.code, not_theirs.reason) == (grpc.StatusCode.NOT_FOUND, "FACTOR_NOT_FOUND")

    admin = await seed_account(server, login="ada", phone="+33611223344", role=Role.ADMIN)
    admin_session = (await sign_in(stub, inbox, admin, phone="+33611223344")).session.token
    listed = await factors.ListFactors(
        fpb.ListFactorsRequest(session_token=admin_session, account_id=target)
    )
    assert [(f.factor_id, f.kind) for f in listed.factors] == [
        (factor.factor_id, fpb.FACTOR_KIND_PASSKEY)
    ]
    grant = await grant_for(
        stub,
        inbox,
        admin_session,
        REMOVE,
        target=target,
        values=of(factor.factor_id),
        phone="+33611223344",
    )
    removed = await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=admin_session,
            grant_token=grant.grant_token,
            factor_id=factor.factor_id,
            account_id=target,
        )
    )
    assert removed.revoked_sessions >= 1
    gone = await failure_of(
        stub.ValidateSession(pb.ValidateSessionRequest(session_token=alice_session))
    )
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED
    assert [(d["by"], d["kind"]) for _, d in await audit_rows(server, "factor.removed")] == [
        ("admin", "passkey")
    ]
    # Gone: the flow takes no passkey any more.
    flow = await login_flow(stub, alice)
    refused = await failure_of(begin(passkeys, flow.flow_id))
    assert refused.reason == "CHANNEL_NOT_AVAILABLE"


# ---- the cap on passkeys per account ---------------------------------------------------------


async def test_registration_beyond_the_cap_is_refused_and_spends_nothing(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    server.app.settings = server.app.settings.model_copy(update={"max_passkeys_per_account": 2})
    session = (await sign_in(stub, inbox, alice)).session.token
    first = await register(stub, passkeys, inbox, session, SoftAuthenticator())
    await register(stub, passkeys, inbox, session, SoftAuthenticator())
    grant = await grant_for(stub, inbox, session, ENROLL)
    full = await failure_of(
        passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(
                session_token=session, grant_token=grant.grant_token
            )
        )
    )
    assert (full.code, full.reason, full.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "FACTOR_LIMIT_REACHED",
        {"limit": "2"},
    )
    # One removed, the same grant (not spent by the refusal) registers a third.
    removal = await grant_for(stub, inbox, session, REMOVE, values=of(first.factor_id))
    await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=session, grant_token=removal.grant_token, factor_id=first.factor_id
        )
    )
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    await passkeys.FinishPasskeyRegistration(
        ppb.FinishPasskeyRegistrationRequest(
            session_token=session,
            ceremony_id=begun.ceremony_id,
            credential_json=SoftAuthenticator().create(begun.creation_options_json),
            name="Third",
        )
    )
    assert await credentials_of(server, alice) == 2


async def test_concurrent_registrations_at_the_cap_only_one_wins(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """Five registrations of one account finishing at once, one place left under the cap: the
    count and the insert are one decision behind the account's row lock, so exactly one is
    stored. (Each needs its own ceremony: the options of one started registration, whose
    row is copied under four more challenges, as if their starts had interleaved.)"""
    server.app.settings = server.app.settings.model_copy(update={"max_passkeys_per_account": 2})
    session = (await sign_in(stub, inbox, alice)).session.token
    await register(stub, passkeys, inbox, session, SoftAuthenticator())
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    ceremonies = [(begun.ceremony_id, begun.creation_options_json)]
    now = server.app.clock.now()
    async with server.app.write() as db:
        for _ in range(4):
            ceremony_id, challenge = uuid.uuid4(), os.urandom(32)
            db.add(
                PasskeyCeremony(
                    id=ceremony_id,
                    account_id=alice.account_id,
                    flow_id=None,
                    kind="registration",
                    challenge=challenge,
                    created_at=now,
                    expires_at=now + timedelta(minutes=5),
                )
            )
            options = {**json.loads(begun.creation_options_json), "challenge": b64url(challenge)}
            ceremonies.append((str(ceremony_id), json.dumps(options)))
    calls = [
        passkeys.FinishPasskeyRegistration(
            ppb.FinishPasskeyRegistrationRequest(
                session_token=session,
                ceremony_id=ceremony_id,
                credential_json=SoftAuthenticator().create(options),
                name="Racing",
            )
        )
        for ceremony_id, options in ceremonies
    ]
    if server.app.db.dialect == "sqlite":
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    else:
        # PostgreSQL: the test holds the account's row until every registration waits on it
        # (each for the cap's lock, or, were there none, for its INSERT's foreign-key check),
        # so that all of them decide at the same moment, the worst case, every time.
        async with server.app.write() as holder:
            await holder.execute(
                select(Account.id).where(Account.id == alice.account_id).with_for_update()
            )
            racing = asyncio.gather(*calls, return_exceptions=True)
            await waiting_on_locks(server, len(calls))
        outcomes = await racing
    won = [o for o in outcomes if isinstance(o, ppb.FinishPasskeyRegistrationResponse)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 4)
    assert {reason_of(error) for error in lost} == {"FACTOR_LIMIT_REACHED"}
    assert await credentials_of(server, alice) == 2


# ---- ceremonies leave no rows behind ---------------------------------------------------------


async def test_a_used_ceremony_leaves_no_row_and_abandoned_ones_do_not_pile_up(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    await register(stub, passkeys, inbox, session, device)
    assert await ceremonies_of(server, alice) == 0  # the registration's, taken: deleted
    flow = await login_flow(stub, alice)
    await finish(passkeys, flow.flow_id, device.get(await begin(passkeys, flow.flow_id)))
    assert await ceremonies_of(server, alice) == 0  # the assertion's, taken: deleted
    flow = await login_flow(stub, alice)
    other_key = ec.generate_private_key(ec.SECP256R1())
    options = await begin(passkeys, flow.flow_id)
    await failure_of(finish(passkeys, flow.flow_id, device.get(options, signer=other_key)))
    assert await ceremonies_of(server, alice) == 0  # refused, but taken all the same
    # Flows opened, their passkey begun, then abandoned: each keeps its ceremony until it
    # expires; the account's next start deletes the expired ones.
    for _ in range(5):
        abandoned = await login_flow(stub, alice)
        await begin(passkeys, abandoned.flow_id)
    assert await ceremonies_of(server, alice) == 5
    clock.advance(server.app.settings.code_ttl_s + 1)
    flow = await login_flow(stub, alice)
    await begin(passkeys, flow.flow_id)
    assert await ceremonies_of(server, alice) == 1
    # A registration started and abandoned: the next start replaces it, expired ones go too.
    for _ in range(3):
        grant = await grant_for(stub, inbox, session, ENROLL)
        await passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(
                session_token=session, grant_token=grant.grant_token
            )
        )
    assert await ceremonies_of(server, alice) == 2  # the flow's assertion, one registration


# ---- a removal's grant names its factor ------------------------------------------------------


async def test_a_removal_grant_removes_the_factor_it_names_only(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    first = await register(stub, passkeys, inbox, session, SoftAuthenticator())
    second = await register(stub, passkeys, inbox, session, SoftAuthenticator())
    grant = await grant_for(stub, inbox, session, REMOVE, values=of(first.factor_id))
    other = await failure_of(
        factors.RemoveFactor(
            fpb.RemoveFactorRequest(
                session_token=session, grant_token=grant.grant_token, factor_id=second.factor_id
            )
        )
    )
    assert (other.code, other.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_VALUES_MISMATCH",
    )
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert sorted(f.factor_id for f in listed.factors) == sorted(
        [first.factor_id, second.factor_id]
    )
    # Not spent: it removes the factor it was made for.
    await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=session, grant_token=grant.grant_token, factor_id=first.factor_id
        )
    )
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert [f.factor_id for f in listed.factors] == [second.factor_id]
    # The step-up names exactly one factor id, in its one spelling.
    for values, field in (
        (pb.ActionValues(), "new_values.factor_id"),
        (pb.ActionValues(factor_id="not-an-id"), "new_values.factor_id"),
        (pb.ActionValues(factor_id=second.factor_id.replace("-", "")), "new_values.factor_id"),
    ):
        bad = await failure_of(open_step_up(stub, session, REMOVE, values=values))
        assert (bad.code, bad.reason, bad.metadata) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            {"field": field},
        )
    enrol = await failure_of(open_step_up(stub, session, ENROLL, values=of(second.factor_id)))
    assert (enrol.reason, enrol.metadata) == ("INVALID_FIELD", {"field": "new_values.factor_id"})
    # An upper-case spelling of the same id binds the same way.
    upper = await grant_for(stub, inbox, session, REMOVE, values=of(second.factor_id.upper()))
    await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=session, grant_token=upper.grant_token, factor_id=second.factor_id
        )
    )

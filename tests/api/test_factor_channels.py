"""Which factors a flow offers, and what switching between them keeps, over real gRPC on SQLite
and PostgreSQL: every flow that takes the account's second factors lists its authenticator app
and its passkeys beside its phone (login by password or by Net-entreprises, step-up, federated
link), a passkey answers each of them, and a code already sent survives a switch to the app or
a passkey (the holder who asked for an SMS, then opened the app, may still type the SMS code).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pyotp
import pytest
from passkey_authenticator import SoftAuthenticator
from sqlalchemy import func, select
from support import CLIENT, MOBILE, PASSWORD, Inbox, Seeded, failure_of, sign_in
from support import step_up as grant_for

from authsvc.clock import FrozenClock
from authsvc.config import DEV_ISSUER, Rate, RateLimits, Settings
from authsvc.db import AuditEvent, Flow
from authsvc.federation import devidp
from authsvc.server import Server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import (
    account_service_pb2_grpc,
    common_pb2,
    factor_service_pb2_grpc,
    passkey_service_pb2_grpc,
)
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import factor_service_pb2 as fpb
from authsvc.v1 import passkey_service_pb2 as ppb

if TYPE_CHECKING:
    from authsvc.v1.account_service_pb2_grpc import AccountServiceAsyncStub as Accounts
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub
    from authsvc.v1.factor_service_pb2_grpc import FactorServiceAsyncStub as Factors
    from authsvc.v1.passkey_service_pb2_grpc import PasskeyServiceAsyncStub as Passkeys

ENROLL = common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR
CHANGE_PASSWORD = common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD
PHONE = [common_pb2.CHANNEL_SMS, common_pb2.CHANNEL_VOICE]  # a mobile's channels
TOTP, PASSKEY = common_pb2.CHANNEL_TOTP, common_pb2.CHANNEL_PASSKEY


@pytest.fixture
def idp(tmp_path: Path) -> Path:
    directory = tmp_path / "idp"
    devidp.keygen(directory)
    return directory


@pytest.fixture
def settings(settings: Settings, idp: Path) -> Settings:
    roomy = Rate(count=1000, period_s=60)
    return settings.model_copy(
        update={
            "rate_limits": RateLimits(
                verify_account=roomy, step_up_account=roomy, login_account=roomy
            ),
            "webauthn_rp_id": "localhost",
            "webauthn_origins": ["http://localhost"],
            "federation_issuers": Settings(
                federation_issuers=[{"issuer": DEV_ISSUER, "jwks_file": str(idp / devidp.JWKS)}]
            ).federation_issuers,
        }
    )


@pytest.fixture
def factors(channel: grpc.aio.Channel) -> Factors:
    return factor_service_pb2_grpc.FactorServiceStub(channel)


@pytest.fixture
def passkeys(channel: grpc.aio.Channel) -> Passkeys:
    return passkey_service_pb2_grpc.PasskeyServiceStub(channel)


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> Accounts:
    return account_service_pb2_grpc.AccountServiceStub(channel)


class Holder:
    """Alice, signed in, with an authenticator app and a passkey."""

    def __init__(self, session: str, app: pyotp.TOTP, device: SoftAuthenticator) -> None:
        self.session, self.app, self.device = session, app, device


@pytest.fixture
async def holder(
    stub: Stub,
    factors: Factors,
    passkeys: Passkeys,
    inbox: Inbox,
    alice: Seeded,
    clock: FrozenClock,
) -> AsyncIterator[Holder]:
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await factors.BeginTotpEnrollment(
        fpb.BeginTotpEnrollmentRequest(
            session_token=session, grant_token=grant.grant_token, name="Phone app"
        )
    )
    app = pyotp.parse_uri(begun.otpauth_uri)
    assert isinstance(app, pyotp.TOTP)
    await factors.ConfirmTotpEnrollment(
        fpb.ConfirmTotpEnrollmentRequest(
            session_token=session,
            factor_id=begun.factor_id,
            code=app.at(clock.now()),
            client=CLIENT,
        )
    )
    clock.advance(30)  # the confirming code's step is used
    device = SoftAuthenticator()
    grant = await grant_for(stub, inbox, session, ENROLL)
    ceremony = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant.grant_token)
    )
    await passkeys.FinishPasskeyRegistration(
        ppb.FinishPasskeyRegistrationRequest(
            session_token=session,
            ceremony_id=ceremony.ceremony_id,
            credential_json=device.create(ceremony.creation_options_json),
            name="Laptop",
        )
    )
    yield Holder(session, app, device)


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


async def step_up_flow(stub: Stub, session: str) -> common_pb2.PendingFlow:
    answer = await stub.AuthorizeSensitiveAction(
        pb.AuthorizeSensitiveActionRequest(
            session_token=session,
            action=CHANGE_PASSWORD,
            new_values=pb.ActionValues(),
            client=CLIENT,
        )
    )
    return answer.pending_flow


def challenge(
    stub: Stub, flow_id: str, channel: common_pb2.Channel.ValueType = common_pb2.CHANNEL_UNSPECIFIED
) -> grpc.aio.UnaryUnaryCall[pb.ChallengeRequest, pb.ChallengeResponse]:
    return stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, channel=channel, client=CLIENT))


def verify(
    stub: Stub, flow_id: str, code: str
) -> grpc.aio.UnaryUnaryCall[pb.VerifyRequest, pb.VerifyResponse]:
    return stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT))


async def by_passkey(
    passkeys: Passkeys, device: SoftAuthenticator, flow_id: str
) -> ppb.FinishPasskeyAssertionResponse:
    begun = await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow_id))
    return await passkeys.FinishPasskeyAssertion(
        ppb.FinishPasskeyAssertionRequest(
            flow_id=flow_id, credential_json=device.get(begun.request_options_json), client=CLIENT
        )
    )


def expiry(response: pb.ChallengeResponse) -> datetime:
    return response.code_expire_time.ToDatetime()


# ---- what a flow lists ----------------------------------------------------------------------


async def test_every_flow_of_the_account_lists_its_app_and_its_passkey(
    stub: Stub,
    passkeys: Passkeys,
    accounts: Accounts,
    holder: Holder,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
) -> None:
    login = await login_flow(stub, alice)
    assert list(login.channels) == [*PHONE, TOTP, PASSKEY]
    assert login.default_channel == common_pb2.CHANNEL_SMS  # the phone stays the default
    assert list((await step_up_flow(stub, holder.session)).channels) == [*PHONE, TOTP, PASSKEY]
    # The federated link's flow (before: its phone's channels only, though Verify took the app).
    assertion = devidp.mint(
        idp,
        subject="ne-alice",
        siret=alice.organization_siret,
        ttl_s=120,
        audience="authsvc",
        issuer=DEV_ISSUER,
        now=clock.now().timestamp(),
    )
    link = (
        await accounts.LinkFederatedIdentity(
            apb.LinkFederatedIdentityRequest(
                session_token=holder.session, assertion=assertion, client=CLIENT
            )
        )
    ).pending_flow
    assert list(link.channels) == [*PHONE, TOTP, PASSKEY]
    # ... and a passkey answers it: the identity is linked.
    linked = await by_passkey(passkeys, holder.device, link.flow_id)
    assert linked.federated_link.linked and linked.federated_link.issuer == DEV_ISSUER
    # The Net-entreprises login's flow lists them too, and the app answers it.
    clock.advance(30)
    federated = (
        await stub.Login(
            pb.LoginRequest(
                federated=pb.FederatedCredential(
                    assertion=devidp.mint(
                        idp,
                        subject="ne-alice",
                        siret=alice.organization_siret,
                        ttl_s=120,
                        audience="authsvc",
                        issuer=DEV_ISSUER,
                        now=clock.now().timestamp(),
                    )
                ),
                client=CLIENT,
            )
        )
    ).pending_flow
    assert list(federated.channels) == [*PHONE, TOTP, PASSKEY]
    await challenge(stub, federated.flow_id, TOTP)
    verified = await verify(stub, federated.flow_id, holder.app.at(clock.now()))
    assert verified.login.session.token


async def test_a_passkey_is_answered_by_its_ceremony_not_by_challenge(
    stub: Stub, holder: Holder, alice: Seeded, inbox: Inbox
) -> None:
    flow = await login_flow(stub, alice)
    refused = await failure_of(challenge(stub, flow.flow_id, PASSKEY))
    assert (refused.code, refused.reason, refused.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHANNEL_NOT_AVAILABLE",
        {"channel": "passkey"},
    )
    # Nothing changed: no challenge on the flow, nothing sent.
    none = await failure_of(verify(stub, flow.flow_id, "123456"))
    assert none.reason == "NO_ACTIVE_CHALLENGE"


async def test_without_passkeys_configured_no_flow_lists_one(
    stub: Stub, holder: Holder, alice: Seeded, server: Server
) -> None:
    server.app.settings = server.app.settings.model_copy(update={"webauthn_origins": []})
    flow = await login_flow(stub, alice)
    assert list(flow.channels) == [*PHONE, TOTP]
    refused = await failure_of(challenge(stub, flow.flow_id, PASSKEY))
    assert refused.reason == "CHANNEL_NOT_AVAILABLE"


async def test_a_member_without_other_factors_is_offered_the_phone_only(
    stub: Stub, inbox: Inbox, alice: Seeded
) -> None:
    flow = await login_flow(stub, alice)
    assert list(flow.channels) == PHONE
    for other in (TOTP, PASSKEY):
        refused = await failure_of(challenge(stub, flow.flow_id, other))
        assert refused.reason == "CHANNEL_NOT_AVAILABLE"


# ---- switching keeps the code sent ----------------------------------------------------------


async def test_switching_to_the_app_keeps_the_code_already_sent(
    stub: Stub, holder: Holder, alice: Seeded, inbox: Inbox, clock: FrozenClock
) -> None:
    flow = await login_flow(stub, alice)
    sent = await challenge(stub, flow.flow_id)
    code = await inbox.code_to(MOBILE)
    window = await challenge(stub, flow.flow_id, TOTP)
    assert window.channel == TOTP
    # The window is the sent code's: same challenge, same expiry (it lives no longer).
    assert (window.challenge_id, expiry(window)) == (sent.challenge_id, expiry(sent))
    verified = await verify(stub, flow.flow_id, code)  # before: CODE_MISMATCH, counted
    assert verified.login.session.token


async def test_switching_to_a_passkey_keeps_the_code_already_sent(
    stub: Stub, passkeys: Passkeys, holder: Holder, alice: Seeded, inbox: Inbox
) -> None:
    flow = await step_up_flow(stub, holder.session)
    await challenge(stub, flow.flow_id)
    code = await inbox.code_to(MOBILE)
    await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow.flow_id))
    verified = await verify(stub, flow.flow_id, code)  # before: NO_ACTIVE_CHALLENGE
    assert verified.action_grant.action == CHANGE_PASSWORD
    # With a code sent and still valid, the passkey answers too (its ceremony has the
    # window's challenge).
    other = await step_up_flow(stub, holder.session)
    await challenge(stub, other.flow_id)
    await inbox.code_to(MOBILE)
    stepped = await by_passkey(passkeys, holder.device, other.flow_id)
    assert stepped.action_grant.action == CHANGE_PASSWORD


async def test_after_the_sent_code_expires_the_window_is_a_new_one(
    stub: Stub, holder: Holder, alice: Seeded, inbox: Inbox, clock: FrozenClock, server: Server
) -> None:
    flow = await login_flow(stub, alice)
    sent = await challenge(stub, flow.flow_id)
    code = await inbox.code_to(MOBILE)
    clock.advance(server.app.settings.code_ttl_s)  # the SMS code has just expired
    window = await challenge(stub, flow.flow_id, TOTP)
    assert window.challenge_id != sent.challenge_id
    assert (expiry(window) - clock.now().replace(tzinfo=None)).total_seconds() == (
        server.app.settings.code_ttl_s
    )
    # The expired code is gone from the flow: typed now, it is a wrong code.
    mismatch = await failure_of(verify(stub, flow.flow_id, code))
    assert (mismatch.reason, mismatch.metadata) == ("CODE_MISMATCH", {"attempts_remaining": "4"})
    verified = await verify(stub, flow.flow_id, holder.app.at(clock.now()))
    assert verified.login.session.token


async def test_a_wrong_code_in_a_kept_window_counts_once(
    stub: Stub, holder: Holder, alice: Seeded, inbox: Inbox, server: Server
) -> None:
    """Both the app and the sent code are compared; a code matching neither is one attempt."""
    flow = await login_flow(stub, alice)
    await challenge(stub, flow.flow_id)
    code = await inbox.code_to(MOBILE)
    await challenge(stub, flow.flow_id, TOTP)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    mismatch = await failure_of(verify(stub, flow.flow_id, wrong))
    assert (mismatch.reason, mismatch.metadata) == ("CODE_MISMATCH", {"attempts_remaining": "4"})
    async with server.app.read() as db:
        attempts = await db.scalar(
            select(func.max(Flow.failed_attempts)).where(Flow.account_id == alice.account_id)
        )
    assert attempts == 1


# ---- a sent code's length apart from the app's ----------------------------------------------


class TestEightDigitCodes:
    """AUTHSVC_CODE_DIGITS=8: SMS codes have 8 digits, the app's keep RFC 6238's 6 (before,
    Verify refused every 6-digit code: the app was unusable)."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"code_digits": 8})

    async def test_the_app_answers_with_six_digits_and_sms_with_eight(
        self, stub: Stub, holder: Holder, alice: Seeded, inbox: Inbox, clock: FrozenClock
    ) -> None:
        flow = await login_flow(stub, alice)
        await challenge(stub, flow.flow_id)
        assert len(await inbox.code_to(MOBILE)) == 8
        # On a flow whose current challenge is the SMS: a 6-digit code is bad input, counted
        # as nothing.
        short = await failure_of(verify(stub, flow.flow_id, "123456"))
        assert (short.code, short.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
        await challenge(stub, flow.flow_id, TOTP)
        # The window (a sent code kept) takes both lengths: the app's 6 digits answer.
        verified = await verify(stub, flow.flow_id, holder.app.at(clock.now()))
        assert verified.login.session.token
        # The SMS code, 8 digits, answers a step-up flow as usual; 7 digits is bad input.
        up = await step_up_flow(stub, verified.login.session.token)
        await challenge(stub, up.flow_id)
        sms_code = await inbox.code_to(MOBILE)
        odd = await failure_of(verify(stub, up.flow_id, sms_code[:7]))
        assert (odd.code, odd.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
        granted = await verify(stub, up.flow_id, sms_code)
        assert granted.action_grant.action == CHANGE_PASSWORD


# ---- the windows' limits --------------------------------------------------------------------


async def test_windows_have_limits_of_their_own(
    stub: Stub, passkeys: Passkeys, holder: Holder, alice: Seeded, server: Server
) -> None:
    """A window sends nothing but writes the flow and an audit row: the flow's budget is shared
    by the app's and the passkey's windows (before: 600 windows on one flow, 600 audit rows)."""
    budget = server.app.settings.rate_limits.factor_window_flow.count
    flow = await login_flow(stub, alice)
    for opened in range(budget):
        if opened % 2:
            await passkeys.BeginPasskeyAssertion(
                ppb.BeginPasskeyAssertionRequest(flow_id=flow.flow_id, client=CLIENT)
            )
        else:
            await challenge(stub, flow.flow_id, TOTP)
    for call in (
        challenge(stub, flow.flow_id, TOTP),
        passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow.flow_id)),
    ):
        refused = await failure_of(call)
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        assert refused.retry_after
    async with server.app.read() as db:
        windows = await db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.event_type.in_(("totp.challenged", "passkey.challenged")))
        )
    assert windows == budget
    # Another flow has its own budget: the holder is not locked out by one flow's windows.
    other = await login_flow(stub, alice)
    assert (await challenge(stub, other.flow_id, TOTP)).channel == TOTP


class TestWindowsPerNetwork:
    """The client's network is charged too (Challenge always gives it)."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        tight = settings.rate_limits.model_copy(
            update={"factor_window_ip": Rate(count=2, period_s=60)}
        )
        return settings.model_copy(update={"rate_limits": tight})

    async def test_windows_are_charged_to_the_clients_network(
        self, stub: Stub, holder: Holder, alice: Seeded
    ) -> None:
        flows = [await login_flow(stub, alice) for _ in range(3)]
        for flow in flows[:2]:
            await challenge(stub, flow.flow_id, TOTP)
        refused = await failure_of(challenge(stub, flows[2].flow_id, TOTP))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )

"""Independent attack review (session 6, second round) of the newest factor code: clone
detection, the passkey cap, REMOVE_FACTOR grants bound to their factor, factor windows,
federated flows.

Over real gRPC on SQLite and PostgreSQL. Tests named `test_finding_*` assert the secure
behaviour and FAIL on the code reviewed (they are the reproductions); the others are what
the review tried and the code withstood ("held"), kept as regression tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pyotp
import pytest
from passkey_authenticator import SoftAuthenticator
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
from authsvc.db import Account, FederatedIdentity, PasskeyCeremony, PasskeyCredential, Role
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
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub
    from authsvc.v1.factor_service_pb2_grpc import FactorServiceAsyncStub as Factors
    from authsvc.v1.passkey_service_pb2_grpc import PasskeyServiceAsyncStub as Passkeys

ENROLL = common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR
REMOVE = common_pb2.SENSITIVE_ACTION_REMOVE_FACTOR
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
ADMIN_PHONE = "+33611223344"
BOB_PHONE = "+33698765432"
OUTSIDER_PHONE = "+33687654321"
OTHER_SIRET = "73282932000074"
ISSUER = "https://net-entreprises.example"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    roomy = Rate(count=100_000, period_s=60)
    return settings.model_copy(
        update={
            "rate_limits": RateLimits(
                verify_account=roomy,
                verify_ip=roomy,
                step_up_account=roomy,
                login_account=roomy,
            ),
            "webauthn_rp_id": "localhost",
            "webauthn_origins": ["http://localhost"],
            "phone_sends_per_hour": 1000,
            "phone_sends_per_day": 1000,
        }
    )


@pytest.fixture
async def factors(channel: grpc.aio.Channel) -> AsyncIterator[Factors]:
    yield factor_service_pb2_grpc.FactorServiceStub(channel)


@pytest.fixture
async def passkeys(channel: grpc.aio.Channel) -> AsyncIterator[Passkeys]:
    yield passkey_service_pb2_grpc.PasskeyServiceStub(channel)


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


async def register_with(
    passkeys: Passkeys, session: str, grant_token: str, device: SoftAuthenticator, name: str
) -> fpb.Factor:
    begun = await passkeys.BeginPasskeyRegistration(
        ppb.BeginPasskeyRegistrationRequest(session_token=session, grant_token=grant_token)
    )
    finished = await passkeys.FinishPasskeyRegistration(
        ppb.FinishPasskeyRegistrationRequest(
            session_token=session,
            ceremony_id=begun.ceremony_id,
            credential_json=device.create(begun.creation_options_json),
            name=name,
        )
    )
    return finished.factor


async def passkey_login(
    stub: Stub, passkeys: Passkeys, who: Seeded, device: SoftAuthenticator, counter: int
) -> ppb.FinishPasskeyAssertionResponse:
    flow_id = await login_flow(stub, who)
    return await finish(
        passkeys, flow_id, device.get(await begin(passkeys, flow_id), counter=counter)
    )


async def passkey_grant(
    stub: Stub,
    passkeys: Passkeys,
    session: str,
    action: common_pb2.SensitiveAction.ValueType,
    device: SoftAuthenticator,
    counter: int,
) -> str:
    flow = (await open_step_up(stub, session, action)).pending_flow
    answer = await finish(
        passkeys, flow.flow_id, device.get(await begin(passkeys, flow.flow_id), counter=counter)
    )
    assert answer.WhichOneof("result") == "action_grant"
    return answer.action_grant.grant_token


def code_at(uri: str, at: datetime) -> str:
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    return str(parsed.at(at.timestamp()))


# ---- 1. clone detection ---------------------------------------------------------------------


async def test_finding_a_passkey_planted_with_the_clone_survives_its_detection(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """Whoever holds the copy (and the password) logs in with it, steps up with it and
    registers a passkey of their own. When the genuine key later shows the counter went back,
    the cloned credential is disabled and every session ends, but the passkey the copy
    planted stays enabled: its holder logs straight back in. "The trust that may rest on the
    copy ends" (flows/passkey.py) leaves out the factors that copy added."""
    sms_session = (await sign_in(stub, inbox, alice)).session.token
    genuine = SoftAuthenticator()
    enroll = await grant_for(stub, inbox, sms_session, ENROLL)
    await register_with(passkeys, sms_session, enroll.grant_token, genuine, "Laptop")
    await passkey_login(stub, passkeys, alice, genuine, counter=5)
    # The attacker's copy: its counter runs ahead of the genuine one's.
    copy = genuine.clone()
    attacker_session = (await passkey_login(stub, passkeys, alice, copy, counter=6)).login
    token = attacker_session.session.token
    grant = await passkey_grant(stub, passkeys, token, ENROLL, copy, counter=7)
    own = SoftAuthenticator()
    planted = await register_with(passkeys, token, grant, own, "Laptop 2")
    # The genuine key answers next: the counter went back, a clone is detected.
    refused = await failure_of(passkey_login(stub, passkeys, alice, genuine, counter=6))
    assert refused.reason == "PASSKEY_CLONED"
    gone = await failure_of(stub.ValidateSession(pb.ValidateSessionRequest(session_token=token)))
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED
    async with server.app.read() as db:
        state = dict(
            (
                await db.execute(
                    select(PasskeyCredential.name, PasskeyCredential.disabled_at).where(
                        PasskeyCredential.account_id == alice.account_id
                    )
                )
            ).all()
        )
    assert state["Laptop"] is not None  # the cloned credential: disabled
    # The passkey the copy's session registered (factor id `planted.factor_id`) still opens
    # the account to whoever holds the copy: a fresh session, after the trust "ended".
    back_in = await failure_of(passkey_login(stub, passkeys, alice, own, counter=1))
    assert back_in.code not in NEVER
    assert planted.factor_id  # named in the failure message of the line above when it logs in


async def test_finding_an_app_enrolled_with_the_clone_survives_its_detection(
    stub: Stub,
    passkeys: Passkeys,
    factors: Factors,
    inbox: Inbox,
    alice: Seeded,
    clock: FrozenClock,
) -> None:
    """The same with an authenticator app: enrolled by the copy's session (its step-up
    answered by the copy), it still completes a login after the clone was detected."""
    sms_session = (await sign_in(stub, inbox, alice)).session.token
    genuine = SoftAuthenticator()
    enroll = await grant_for(stub, inbox, sms_session, ENROLL)
    await register_with(passkeys, sms_session, enroll.grant_token, genuine, "Laptop")
    await passkey_login(stub, passkeys, alice, genuine, counter=5)
    copy = genuine.clone()
    token = (await passkey_login(stub, passkeys, alice, copy, counter=6)).login.session.token
    grant = await passkey_grant(stub, passkeys, token, ENROLL, copy, counter=7)
    begun = await factors.BeginTotpEnrollment(
        fpb.BeginTotpEnrollmentRequest(session_token=token, grant_token=grant, name="Phone")
    )
    await factors.ConfirmTotpEnrollment(
        fpb.ConfirmTotpEnrollmentRequest(
            session_token=token,
            factor_id=begun.factor_id,
            code=code_at(begun.otpauth_uri, clock.now()),
            client=CLIENT,
        )
    )
    clock.advance(30)
    refused = await failure_of(passkey_login(stub, passkeys, alice, genuine, counter=6))
    assert refused.reason == "PASSKEY_CLONED"
    flow_id = await login_flow(stub, alice)
    # The app went with the clone's detection: the flow no longer offers it.
    back_in = await failure_of(
        stub.Challenge(
            pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_TOTP, client=CLIENT)
        )
    )
    assert (back_in.code, back_in.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHANNEL_NOT_AVAILABLE",
    )


async def test_finding_a_clone_detection_racing_a_window_deadlocks_on_postgres(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """_disable_clone takes the account's row FOR UPDATE, then end_trust fails the account's
    pending flows. BeginPasskeyAssertion on another of its flows holds that flow's row (the
    window's UPDATE), then inserts its ceremony, whose foreign key takes the account's row
    FOR KEY SHARE, which FOR UPDATE excludes: each waits for the other. PostgreSQL aborts one
    (deadlock detected) and its answer is INTERNAL: here the window's (the next test: the
    detection's). A third connection holds the account's row so that the two queue in this
    order every time (the detection first)."""
    if server.app.db.dialect == "sqlite":
        pytest.skip("PostgreSQL's row locks")
    session = (await sign_in(stub, inbox, alice)).session.token
    genuine = SoftAuthenticator()
    grant = await grant_for(stub, inbox, session, ENROLL)
    await register_with(passkeys, session, grant.grant_token, genuine, "Laptop")
    await passkey_login(stub, passkeys, alice, genuine, counter=5)
    clone_flow = await login_flow(stub, alice)
    answer = genuine.clone().get(await begin(passkeys, clone_flow), counter=3)
    other_flow = await login_flow(stub, alice)  # the holder's, opening a passkey window
    async with server.app.write() as holder:
        await holder.execute(
            select(Account.id).where(Account.id == alice.account_id).with_for_update()
        )
        detection = asyncio.ensure_future(finish(passkeys, clone_flow, answer))
        await waiting_on_locks(server, 1)
        window = asyncio.ensure_future(begin(passkeys, other_flow))
        await waiting_on_locks(server, 2)
    outcomes = await asyncio.gather(detection, window, return_exceptions=True)
    codes = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert not set(codes) & set(NEVER), codes
    async with server.app.read() as db:
        disabled = await db.scalar(select(PasskeyCredential.disabled_at))
    assert disabled is not None


async def test_finding_a_clone_detection_aborted_by_a_deadlock_leaves_the_clone_enabled(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """The same cycle in the other order: the window holds its flow's row and waits (here on an
    expired ceremony of the account that its prune deletes, held by a third connection); the
    detection locks the account and waits for that flow; the window then needs the account's
    row FOR KEY SHARE. The detection has waited longest, so PostgreSQL aborts IT: the copy's
    assertion answers INTERNAL, and the passkey stays enabled, the sessions alive."""
    if server.app.db.dialect == "sqlite":
        pytest.skip("PostgreSQL's row locks")
    session = (await sign_in(stub, inbox, alice)).session.token
    genuine = SoftAuthenticator()
    grant = await grant_for(stub, inbox, session, ENROLL)
    await register_with(passkeys, session, grant.grant_token, genuine, "Laptop")
    await passkey_login(stub, passkeys, alice, genuine, counter=5)
    clone_flow = await login_flow(stub, alice)
    answer = genuine.clone().get(await begin(passkeys, clone_flow), counter=3)
    other_flow = await login_flow(stub, alice)
    now = server.app.clock.now()
    stale = uuid.uuid4()
    async with server.app.write() as db:
        db.add(
            PasskeyCeremony(
                id=stale,
                account_id=alice.account_id,
                flow_id=None,
                kind="registration",
                challenge=b"x" * 32,
                created_at=now - timedelta(hours=1),
                expires_at=now - timedelta(minutes=30),
            )
        )
    async with server.app.write() as holder:
        await holder.execute(
            select(PasskeyCeremony.id).where(PasskeyCeremony.id == stale).with_for_update()
        )
        window = asyncio.ensure_future(begin(passkeys, other_flow))
        await waiting_on_locks(server, 1)
        detection = asyncio.ensure_future(finish(passkeys, clone_flow, answer))
        await waiting_on_locks(server, 2)
    outcomes = await asyncio.gather(detection, window, return_exceptions=True)
    codes = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    async with server.app.read() as db:
        disabled = await db.scalar(select(PasskeyCredential.disabled_at))
    assert (disabled is not None, set(codes) & set(NEVER)) == (True, set()), codes
    gone = await failure_of(stub.ValidateSession(pb.ValidateSessionRequest(session_token=session)))
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED


async def test_finding_a_removal_racing_a_passkey_window_deadlocks_on_postgres(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """RemoveFactor now takes the holder's row FOR UPDATE (2dfd16c), then end_trust fails its
    pending flows: against a passkey window on one of them (its flow's row, then its
    ceremony's foreign key FOR KEY SHARE), the same cycle; one answers INTERNAL."""
    if server.app.db.dialect == "sqlite":
        pytest.skip("PostgreSQL's row locks")
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    first = await register_with(passkeys, session, grant.grant_token, SoftAuthenticator(), "A")
    grant = await grant_for(stub, inbox, session, ENROLL)
    await register_with(passkeys, session, grant.grant_token, SoftAuthenticator(), "B")
    removal = await grant_for(
        stub, inbox, session, REMOVE, values=pb.ActionValues(factor_id=first.factor_id)
    )
    pending = await login_flow(stub, alice)
    async with server.app.write() as holder:
        await holder.execute(
            select(Account.id).where(Account.id == alice.account_id).with_for_update()
        )
        remove = asyncio.ensure_future(
            factors.RemoveFactor(
                fpb.RemoveFactorRequest(
                    session_token=session,
                    grant_token=removal.grant_token,
                    factor_id=first.factor_id,
                )
            )
        )
        await waiting_on_locks(server, 1)
        window = asyncio.ensure_future(begin(passkeys, pending))
        await waiting_on_locks(server, 2)
    outcomes = await asyncio.gather(remove, window, return_exceptions=True)
    codes = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert not set(codes) & set(NEVER), codes


# ---- 5. the new emails ----------------------------------------------------------------------

# What whoever registers a passkey may call it: the holder's warning then speaks their words.
LURE = "PC » a été retirée. Rien à faire, voir evil.example/aide «"


async def added_notice(inbox: Inbox, who: Seeded) -> dict[str, str]:
    for _ in range(500):  # a hang guard (10 s), not a measurement
        for message in inbox.messages():
            if message["to"] == f"{who.login}@example.fr" and "ajoutée" in message["text"]:
                return message
        await asyncio.sleep(0.02)
    raise AssertionError("no passkey_added notice")


async def test_finding_the_factor_name_rewrites_the_warning_it_is_named_in(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded
) -> None:
    """passkey_added (and factor_added) warn the holder that a new way in was added, by
    whoever held a session and a code. That same person names the factor, and the name goes
    into the warning as is (validation.name: any printable text, 200 characters; NAME_MAX
    64): closing the quote, they make the mail say the passkey was removed and send the
    holder to a page of theirs. HTML is escaped (held); the text is not constrained."""
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    await register_with(passkeys, session, grant.grant_token, SoftAuthenticator(), LURE)
    notice = await added_notice(inbox, alice)
    assert "<a" not in (notice.get("html") or "")  # held: no markup of the name's
    assert "evil.example" not in notice["text"], notice["text"]


# ---- held: what the review tried and the code withstood --------------------------------------


async def test_held_a_disabled_passkey_cannot_be_registered_again(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded
) -> None:
    """The cloned credential, once disabled, is not accepted again by a new registration (its
    id is unique, the options exclude it): FACTOR_ALREADY_ENROLLED, never INTERNAL."""
    session = (await sign_in(stub, inbox, alice)).session.token
    genuine = SoftAuthenticator()
    grant = await grant_for(stub, inbox, session, ENROLL)
    await register_with(passkeys, session, grant.grant_token, genuine, "Laptop")
    await passkey_login(stub, passkeys, alice, genuine, counter=5)
    refused = await failure_of(passkey_login(stub, passkeys, alice, genuine.clone(), counter=5))
    assert refused.reason == "PASSKEY_CLONED"
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    again = await failure_of(register_with(passkeys, session, grant.grant_token, genuine, "Again"))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "FACTOR_ALREADY_ENROLLED")
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert [f.HasField("disable_time") for f in listed.factors] == [True]
    # A step-up offers no passkey channel any more.
    flow = (await open_step_up(stub, session, ENROLL)).pending_flow
    assert common_pb2.CHANNEL_PASSKEY not in flow.channels


async def test_held_an_admins_removal_grant_for_one_member_removes_nothing_of_another(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """An administrator's REMOVE_FACTOR grant made for member A (target A, A's factor) does not
    remove member B's passkey, whether B's factor id or A's is named; and is not spent."""
    bob = await seed_account(server, login="bob", phone=BOB_PHONE)
    admin = await seed_account(server, login="ada", phone=ADMIN_PHONE, role=Role.ADMIN)
    ids = {}
    for who, phone in ((alice, "+33612345678"), (bob, BOB_PHONE)):
        session = (await sign_in(stub, inbox, who, phone=phone)).session.token
        grant = await grant_for(stub, inbox, session, ENROLL, phone=phone)
        factor = await register_with(passkeys, session, grant.grant_token, SoftAuthenticator(), "K")
        ids[who.login] = factor.factor_id
    admin_session = (await sign_in(stub, inbox, admin, phone=ADMIN_PHONE)).session.token
    grant = await grant_for(
        stub,
        inbox,
        admin_session,
        REMOVE,
        target=str(alice.account_id),
        values=pb.ActionValues(factor_id=ids["alice"]),
        phone=ADMIN_PHONE,
    )
    for factor_id in (ids["bob"], ids["alice"]):
        refused = await failure_of(
            factors.RemoveFactor(
                fpb.RemoveFactorRequest(
                    session_token=admin_session,
                    grant_token=grant.grant_token,
                    factor_id=factor_id,
                    account_id=str(bob.account_id),
                )
            )
        )
        assert refused.code not in NEVER
        assert refused.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    async with server.app.read() as db:
        kept = await db.scalar(select(func.count()).select_from(PasskeyCredential))
    assert kept == 2
    # The admin's grant still removes what it names, where it names it.
    await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=admin_session,
            grant_token=grant.grant_token,
            factor_id=ids["alice"],
            account_id=str(alice.account_id),
        )
    )
    async with server.app.read() as db:
        left = await db.scalar(select(func.count()).select_from(PasskeyCredential))
    assert left == 1  # bob's


@pytest.mark.parametrize(
    "factor_id",
    [
        "\x00" * 36,
        "0" * 35 + "\u0660",
        "\U0001f600" * 36,
        "urn:uuid:" + "0" * 32,
        "{" + "0" * 32 + "}--",
        "z" * 10_000,
        "",
    ],
)
async def test_held_odd_factor_ids_never_answer_internal(
    stub: Stub, passkeys: Passkeys, factors: Factors, inbox: Inbox, alice: Seeded, factor_id: str
) -> None:
    """ActionValues.factor_id, RemoveFactorRequest.factor_id and BeginPasskeyAssertion's client
    with odd text: a clear status, never INTERNAL or UNKNOWN."""
    session = (await sign_in(stub, inbox, alice)).session.token
    opened = await failure_of(
        open_step_up(stub, session, REMOVE, values=pb.ActionValues(factor_id=factor_id))
    )
    assert (opened.code, opened.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    removed = await failure_of(
        factors.RemoveFactor(
            fpb.RemoveFactorRequest(
                session_token=session, grant_token="g" * 43, factor_id=factor_id
            )
        )
    )
    assert removed.code == grpc.StatusCode.INVALID_ARGUMENT
    flow_id = await login_flow(stub, alice)
    odd = await failure_of(
        passkeys.BeginPasskeyAssertion(
            ppb.BeginPasskeyAssertionRequest(
                flow_id=flow_id,
                client=common_pb2.ClientContext(ip_address=factor_id, user_agent=factor_id),
            )
        )
    )
    assert odd.code not in NEVER


async def test_held_an_outsider_admin_cannot_unlink_or_end_sessions(
    stub: Stub, channel: grpc.aio.Channel, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """An administrator of another organisation naming alice in UnlinkFederatedIdentity:
    refused before any flow opens; alice's identity and session stay."""
    session = (await sign_in(stub, inbox, alice)).session.token
    async with server.app.write() as db:
        db.add(
            FederatedIdentity(
                account_id=alice.account_id,
                issuer=ISSUER,
                subject="alice-sub",
                linked_at=server.app.clock.now(),
            )
        )
    outsider = await seed_account(
        server, login="olga", phone=OUTSIDER_PHONE, siret=OTHER_SIRET, role=Role.ADMIN
    )
    olga = (await sign_in(stub, inbox, outsider, phone=OUTSIDER_PHONE)).session.token
    refused = await failure_of(
        account_service_pb2_grpc.AccountServiceStub(channel).UnlinkFederatedIdentity(
            apb.UnlinkFederatedIdentityRequest(
                session_token=olga,
                target_account_id=str(alice.account_id),
                issuer=ISSUER,
                client=CLIENT,
            )
        )
    )
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    await stub.ValidateSession(pb.ValidateSessionRequest(session_token=session))
    async with server.app.read() as db:
        assert await db.scalar(select(func.count()).select_from(FederatedIdentity)) == 1


async def test_held_a_passkey_window_neither_extends_a_sent_code_nor_adds_attempts(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    """An SMS code kept by passkey windows opened again and again: it expires when it was sent
    to, and the flow's five attempts stay five (windows reset nothing)."""
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    await register_with(passkeys, session, grant.grant_token, SoftAuthenticator(), "Laptop")
    flow_id = await login_flow(stub, alice)
    await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
    code = await inbox.code_to("+33612345678")
    wrong = "000000" if code != "000000" else "111111"
    remaining = []
    for _ in range(4):
        clock.advance(60)
        await begin(passkeys, flow_id)
        failed = await failure_of(
            stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=wrong, client=CLIENT))
        )
        remaining.append(failed.metadata.get("attempts_remaining"))
    assert remaining == ["4", "3", "2", "1"]
    clock.advance(server.app.settings.code_ttl_s - 240)  # the SMS's own expiry
    await begin(passkeys, flow_id)  # a new window: the sent code is gone, not renewed
    late = await failure_of(
        stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT))
    )
    assert late.code not in NEVER
    assert late.reason in ("NO_ACTIVE_CHALLENGE", "CODE_EXPIRED"), late

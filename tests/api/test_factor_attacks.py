"""Attacks on the second factors (authenticator apps, passkeys), over real gRPC: the findings
of the attack review of issue 16, each test failing on the code reviewed, and what that review
tried and the code withstood ("held"), kept as regression tests. Where a test needs two
transactions in a given order on PostgreSQL, a third connection holds a real row lock (SELECT
... FOR UPDATE) while the calls queue behind it, then lets them go: the interleaving that
concurrent traffic reaches by chance, made certain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING

import grpc
import pyotp
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from passkey_authenticator import SoftAuthenticator, b64url
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from support import CLIENT, MOBILE, PASSWORD, Inbox, Seeded, failure_of, seed_account, sign_in
from support import step_up as grant_for

from authsvc.clock import FrozenClock
from authsvc.config import Rate, RateLimits, Settings
from authsvc.db import AuditEvent, OutboxMessage, PasskeyCredential, SecondFactor
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
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
OTHER_PHONE = "+33698765432"


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


def code_at(uri: str, at: datetime) -> str:
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    return str(parsed.at(at.timestamp()))


async def enrol_totp(
    stub: Stub, factors: Factors, inbox: Inbox, session: str, clock: FrozenClock
) -> tuple[str, str]:
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await factors.BeginTotpEnrollment(
        fpb.BeginTotpEnrollmentRequest(
            session_token=session, grant_token=grant.grant_token, name="Work phone"
        )
    )
    await factors.ConfirmTotpEnrollment(
        fpb.ConfirmTotpEnrollmentRequest(
            session_token=session,
            factor_id=begun.factor_id,
            code=code_at(begun.otpauth_uri, clock.now()),
            client=CLIENT,
        )
    )
    clock.advance(30)  # the confirming code's step is used
    return begun.factor_id, begun.otpauth_uri


async def register_passkey(
    stub: Stub,
    passkeys: Passkeys,
    inbox: Inbox,
    session: str,
    device: SoftAuthenticator,
    *,
    phone: str = MOBILE,
) -> str:
    grant = await grant_for(stub, inbox, session, ENROLL, phone=phone)
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
    return finished.factor.factor_id


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


async def status_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# ---- 1. odd bytes in a passkey's JSON: INTERNAL ------------------------------------------------

# json.loads recurses per nesting level: 16 KiB of "[" is far deeper than Python's limit.
DEEP_ARRAY = "[" * 5000
DEEP_OBJECT = '{"a":' * 2500 + "1" + "}" * 2500


def user_handle(device: SoftAuthenticator, value: str) -> str:
    """A well-formed assertion whose userHandle is not base64url: non-ASCII, or one character
    (py_webauthn decodes it with ValueError or binascii.Error, not one of its own exceptions)."""
    options = json.dumps({"challenge": b64url(b"c" * 32), "rpId": "localhost"})
    answer = json.loads(device.get(options))
    answer["response"]["userHandle"] = value
    return json.dumps(answer)


@pytest.mark.parametrize(
    "shape", ["deep_array", "deep_object", "non_ascii_user_handle", "one_character_user_handle"]
)
async def test_passkey_json_never_crashes(
    passkeys: Passkeys, stub: Stub, alice: Seeded, shape: str
) -> None:
    """FinishPasskeyAssertion parses the JSON before it even reads the flow: any backend
    allowed to call it (no session, no flow of its own) gets INTERNAL and a stack trace
    logged per call. FinishPasskeyRegistration's parse is the same."""
    body = {
        "deep_array": DEEP_ARRAY,
        "deep_object": DEEP_OBJECT,
        "non_ascii_user_handle": user_handle(SoftAuthenticator(), "é"),
        "one_character_user_handle": user_handle(SoftAuthenticator(), "A"),
    }[shape]
    flow_id = await login_flow(stub, alice)
    refused = await failure_of(
        passkeys.FinishPasskeyAssertion(
            ppb.FinishPasskeyAssertionRequest(flow_id=flow_id, credential_json=body, client=CLIENT)
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")


async def test_passkey_registration_json_never_crashes(
    passkeys: Passkeys, stub: Stub, inbox: Inbox, alice: Seeded
) -> None:
    """FinishPasskeyRegistration parses with the same function, before its ceremony is read:
    a session (no grant, no ceremony) is enough."""
    session = (await sign_in(stub, inbox, alice)).session.token
    refused = await failure_of(
        passkeys.FinishPasskeyRegistration(
            ppb.FinishPasskeyRegistrationRequest(
                session_token=session,
                ceremony_id="00000000-0000-4000-8000-000000000000",
                credential_json=DEEP_ARRAY,
                name="Laptop",
            )
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")


json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
FIELDS = (
    "id",
    "rawId",
    "type",
    "response.clientDataJSON",
    "response.authenticatorData",
    "response.signature",
    "response.userHandle",
    "authenticatorAttachment",
    "clientExtensionResults",
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_passkey_json_fuzzed_never_internal(
    passkeys: Passkeys, stub: Stub, alice: Seeded
) -> None:
    """Hypothesis over the JSON fields of a real assertion (each replaced by any JSON value
    or by base64url of any bytes): never INTERNAL/UNKNOWN."""
    flow_id = await login_flow(stub, alice)
    options = json.dumps({"challenge": b64url(b"c" * 32), "rpId": "localhost"})
    base = json.loads(SoftAuthenticator().get(options))
    bodies: list[str] = []

    @hsettings(
        max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(FIELDS),
                json_value | st.binary(max_size=64).map(b64url) | st.text(max_size=8),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def draw(changes: list[tuple[str, object]]) -> None:
        answer = json.loads(json.dumps(base))
        for path, value in changes:
            *parents, leaf = path.split(".")
            node = answer
            for parent in parents:
                if not isinstance(node.get(parent), dict):
                    node[parent] = {}
                node = node[parent]
            node[leaf] = value
        bodies.append(json.dumps(answer))

    # Hypothesis draws the bodies (no I/O in its loop); the server then answers each.
    draw()
    seen = []
    for body in bodies:
        call = passkeys.FinishPasskeyAssertion(
            ppb.FinishPasskeyAssertionRequest(flow_id=flow_id, credential_json=body, client=CLIENT)
        )
        code = await status_of(call)
        if code in NEVER:
            seen.append((code, body[:160]))
    assert seen == []


# ---- 2. removing a factor while it answers a flow: a PostgreSQL deadlock -----------------------


async def lock_waiters(conn: AsyncConnection) -> int:
    """Backends of this database waiting on a lock (not counting the holder's own)."""
    found = await conn.execute(
        text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )
    return int(found.scalar_one())


async def until_waiting(conn: AsyncConnection, count: int) -> None:
    for _ in range(3000):  # a hang guard (30 s), not a measurement
        if await lock_waiters(conn) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} calls waiting on a lock")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("kind", ["totp", "passkey"])
async def test_remove_factor_while_it_answers_a_login_never_internal(
    stub: Stub,
    factors: Factors,
    passkeys: Passkeys,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
    clock: FrozenClock,
    settings: Settings,
    kind: str,
) -> None:
    """RemoveFactor locks the factor (DELETE) then the account (end_trust); a Verify by the
    app (or FinishPasskeyAssertion) locks the account and the flow, then the factor (the step's
    or the counter's claim). Opposite orders: PostgreSQL detects the deadlock and aborts one,
    which answers INTERNAL ("internal error", a stack trace logged). The holder removing their
    app while someone (the thief with the password who also has it, or their own other
    device) signs in with it is enough; a third connection's row lock only makes the
    interleaving certain."""
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    if kind == "totp":
        factor_id, uri = await enrol_totp(stub, factors, inbox, session, clock)
        table = SecondFactor.__tablename__
    else:
        factor_id = await register_passkey(stub, passkeys, inbox, session, device)
        uri = ""
        table = PasskeyCredential.__tablename__
    grant = await grant_for(
        stub, inbox, session, REMOVE, values=pb.ActionValues(factor_id=factor_id)
    )
    flow_id = await login_flow(stub, alice)
    if kind == "totp":
        await stub.Challenge(
            pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_TOTP, client=CLIENT)
        )
        code = code_at(uri, clock.now())

        def answer() -> object:
            return stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT))

    else:
        options = (
            await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow_id))
        ).request_options_json
        signed = device.get(options)

        def answer() -> object:
            return passkeys.FinishPasskeyAssertion(
                ppb.FinishPasskeyAssertionRequest(
                    flow_id=flow_id, credential_json=signed, client=CLIENT
                )
            )

    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as holder, engine.connect() as watcher:
            await holder.execute(
                text(f"SELECT id FROM {table} WHERE id = :id FOR UPDATE"),
                {"id": factor_id},
            )
            remove = asyncio.ensure_future(
                status_of(
                    factors.RemoveFactor(
                        fpb.RemoveFactorRequest(
                            session_token=session,
                            grant_token=grant.grant_token,
                            factor_id=factor_id,
                        )
                    )
                )
            )
            await until_waiting(watcher, 1)  # RemoveFactor's DELETE waits for the factor
            login = asyncio.ensure_future(status_of(answer()))  # a call starts when made
            await until_waiting(watcher, 2)  # the claim waits, account and flow locked
            await holder.rollback()  # let them go: RemoveFactor first, then the claim
            outcomes = {"remove": await remove, "login": await login}
    finally:
        await engine.dispose()
    assert not set(outcomes.values()) & set(NEVER), outcomes


# ---- 3. a new way in, added silently --------------------------------------------------------


async def emails(server: Server) -> list[str]:
    async with server.app.read() as db:
        found = await db.scalars(
            select(OutboxMessage.template)
            .where(OutboxMessage.channel == "email")
            .order_by(OutboxMessage.created_at, OutboxMessage.id)
        )
    return list(found)


@pytest.mark.parametrize("kind", ["totp", "passkey"])
async def test_enrolling_a_factor_tells_the_holder(
    stub: Stub,
    factors: Factors,
    passkeys: Passkeys,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
    clock: FrozenClock,
    kind: str,
) -> None:
    """A password change, a contact change, a federated link and a factor's REMOVAL each email
    the holder; the enrolment of an authenticator app or a passkey (a second factor that
    signs in, and answers every later step-up without the phone) emails nobody. Whoever held
    the session and the phone for one code (a SIM swap, a phone left unlocked) keeps a way in
    after both are recovered, and the holder never hears of it."""
    session = (await sign_in(stub, inbox, alice)).session.token
    before = await emails(server)
    if kind == "totp":
        await enrol_totp(stub, factors, inbox, session, clock)
    else:
        await register_passkey(stub, passkeys, inbox, session, SoftAuthenticator())
    added = (await emails(server))[len(before) :]
    assert added, "no email to the holder about the new factor"


# ---- what held (kept as regression tests) ---------------------------------------------------


async def test_held_a_passkey_of_one_account_does_not_complete_anothers_flow(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """Mallory registers her own passkey, then answers Alice's login ceremony with it (the
    right challenge, a valid signature, her own credential id and user handle)."""
    mallory = await seed_account(server, login="mallory", phone=OTHER_PHONE)
    mallory_session = (await sign_in(stub, inbox, mallory, phone=OTHER_PHONE)).session.token
    mine = SoftAuthenticator()
    await register_passkey(stub, passkeys, inbox, mallory_session, mine, phone=OTHER_PHONE)
    alice_session = (await sign_in(stub, inbox, alice)).session.token
    await register_passkey(stub, passkeys, inbox, alice_session, SoftAuthenticator())
    flow_id = await login_flow(stub, alice)
    options = (
        await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow_id))
    ).request_options_json
    refused = await failure_of(
        passkeys.FinishPasskeyAssertion(
            ppb.FinishPasskeyAssertionRequest(
                flow_id=flow_id, credential_json=mine.get(options), client=CLIENT
            )
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "PASSKEY_REJECTED")
    assert refused.metadata["attempts_remaining"] == "4"


async def test_held_one_assertion_many_times_at_once_wins_once(
    stub: Stub, passkeys: Passkeys, inbox: Inbox, alice: Seeded
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    device = SoftAuthenticator()
    await register_passkey(stub, passkeys, inbox, session, device)
    flow_id = await login_flow(stub, alice)
    options = (
        await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow_id))
    ).request_options_json
    signed = device.get(options)
    outcomes = await asyncio.gather(
        *(
            status_of(
                passkeys.FinishPasskeyAssertion(
                    ppb.FinishPasskeyAssertionRequest(
                        flow_id=flow_id, credential_json=signed, client=CLIENT
                    )
                )
            )
            for _ in range(200)
        )
    )
    assert outcomes.count(grpc.StatusCode.OK) == 1
    # the others: the ceremony taken (NOT_FOUND) or the flow completed (FAILED_PRECONDITION)
    assert set(outcomes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }


async def test_held_switching_windows_gives_no_new_guesses(
    stub: Stub,
    factors: Factors,
    passkeys: Passkeys,
    inbox: Inbox,
    alice: Seeded,
    clock: FrozenClock,
) -> None:
    """Four wrong codes, then every switch (app, SMS, passkey, app again, the sent code
    expired meanwhile): the fifth wrong answer of any kind ends the flow."""
    session = (await sign_in(stub, inbox, alice)).session.token
    _, uri = await enrol_totp(stub, factors, inbox, session, clock)
    await register_passkey(stub, passkeys, inbox, session, SoftAuthenticator())
    flow_id = await login_flow(stub, alice)
    totp = pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_TOTP, client=CLIENT)
    sms = pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_SMS, client=CLIENT)
    right = code_at(uri, clock.now())
    bad = f"{(int(right) + 500_000) % 1_000_000:06d}"
    await stub.Challenge(totp)
    for round_ in range(4):
        await failure_of(stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=bad, client=CLIENT)))
        await stub.Challenge(sms if round_ == 0 else totp)
        await passkeys.BeginPasskeyAssertion(ppb.BeginPasskeyAssertionRequest(flow_id=flow_id))
        if round_ == 0:
            clock.advance(301)  # the sent code expires: the next windows are new ones
        await stub.Challenge(totp)
    last = await failure_of(stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=bad, client=CLIENT)))
    assert (last.reason, last.metadata.get("attempts_remaining")) == ("CODE_MISMATCH", "0")
    after = await failure_of(
        stub.Verify(
            pb.VerifyRequest(flow_id=flow_id, code=code_at(uri, clock.now()), client=CLIENT)
        )
    )
    assert after.reason in ("FLOW_FAILED", "FLOW_EXPIRED"), after


# ---- 4. an unmetered write per call ---------------------------------------------------------


async def audit_count(server: Server, event_type: str) -> int:
    async with server.app.read() as db:
        found = await db.scalars(
            select(AuditEvent.sequence).where(AuditEvent.event_type == event_type)
        )
        return len(list(found))


async def test_factor_windows_are_metered(
    stub: Stub,
    factors: Factors,
    passkeys: Passkeys,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
    clock: FrozenClock,
) -> None:
    """Challenge(CHANNEL_TOTP) and BeginPasskeyAssertion send nothing, but each one is an
    UPDATE of the flow and an audit row (plus a ceremony's DELETE and INSERT for a passkey).
    Whoever has one flow id (a password thief: Login gives it) wrote without bound from one
    address before (300 + 300 calls, all answered); the windows' own limits refuse now."""
    session = (await sign_in(stub, inbox, alice)).session.token
    await enrol_totp(stub, factors, inbox, session, clock)
    await register_passkey(stub, passkeys, inbox, session, SoftAuthenticator())
    flow_id = await login_flow(stub, alice)
    totp = pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_TOTP, client=CLIENT)
    begin = ppb.BeginPasskeyAssertionRequest(flow_id=flow_id)
    outcomes = await asyncio.gather(
        *(status_of(stub.Challenge(totp)) for _ in range(300)),
        *(status_of(passkeys.BeginPasskeyAssertion(begin)) for _ in range(300)),
    )
    rows = await audit_count(server, "totp.challenged") + await audit_count(
        server, "passkey.challenged"
    )
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes, (rows, set(outcomes))


async def test_held_right_and_wrong_app_codes_at_once_on_one_flow(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    """300 answers at once on one TOTP window (the right code, and wrong ones between): one
    session, at most the flow's 5 attempts counted, never INTERNAL (PostgreSQL: no deadlock
    between the count and the completion)."""
    session = (await sign_in(stub, inbox, alice)).session.token
    _, uri = await enrol_totp(stub, factors, inbox, session, clock)
    flow_id = await login_flow(stub, alice)
    await stub.Challenge(
        pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_TOTP, client=CLIENT)
    )
    right = code_at(uri, clock.now())
    codes = [right if index % 3 == 0 else f"{index:06d}" for index in range(300)]
    outcomes = await asyncio.gather(
        *(
            status_of(stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT)))
            for code in codes
        )
    )
    assert outcomes.count(grpc.StatusCode.OK) <= 1
    assert not set(outcomes) & set(NEVER)
    assert outcomes.count(grpc.StatusCode.UNAUTHENTICATED) <= 5

"""Every AuthService RPC fuzzed with random requests (Hypothesis), on SQLite and PostgreSQL.

Property: a call either succeeds or fails *deliberately*: never INTERNAL nor UNKNOWN, and every
failure carries exactly one google.rpc.ErrorInfo of domain "authsvc.v1" whose reason is an
ErrorReason name (without its prefix) that the RPC documents, with the status code common.proto
gives that reason. RESOURCE_EXHAUSTED and ACCOUNT_LOCKED also carry a RetryInfo. Every answer
carries an x-request-id trailer (the caller's, when it sent a well-formed one).

The contract (reason -> status code, reasons per RPC) is read from the .proto files themselves,
so the test follows the documented API rather than a copy of it.

Hypothesis does not drive pytest-asyncio fixtures well, so the aio server runs in a background
thread with its own event loop (one per module and backend) and the test talks to it through a
synchronous channel. Besides fully random requests, "near-valid" strategies (valid SIRETs and
logins, real flow ids, 6-digit and real codes, 43-character and real tokens) reach the code paths
behind validation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import string
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from support import (
    CLIENT,
    LANDLINE,
    MOBILE,
    OTHER_SIRET,
    PASSWORD,
    SIRET,
    TEST_API_KEYS,
    Seeded,
    failure_of,
    seed_account,
    sync_channel,
)

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.db.migrate import upgrade
from authsvc.server import MAX_MESSAGE_BYTES, Server, create_server
from authsvc.v1 import account_service_pb2, account_service_pb2_grpc, common_pb2
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as AsyncStub

T = TypeVar("T")

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "authsvc" / "v1"
DOMAIN = "authsvc.v1"
CALL_TIMEOUT_S = 20.0
EXAMPLES = 150
GENERIC_EXAMPLES = 40  # per AccountService RPC and RedeemActionGrant
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- the contract, read from the proto files ---------------------------------------------------


def _comment_blocks(source: str, declaration: str) -> dict[str, str]:
    """Map each declared name to the `//` comment block right above its declaration."""
    pattern = re.compile(r"((?:[ \t]*//[^\n]*\n)+)[ \t]*" + declaration)
    return {match.group(2): match.group(1) for match in pattern.finditer(source)}


def _reason_status() -> dict[str, str]:
    """ErrorReason name (no prefix) -> the gRPC status code its comment opens with."""
    source = (PROTO_DIR / "common.proto").read_text()
    table: dict[str, str] = {}
    for name, comment in _comment_blocks(source, r"ERROR_REASON_(\w+) = \d+;").items():
        if name == "UNSPECIFIED":
            continue
        opening = re.match(r"\s*//\s*([A-Z_]+)[.,]", comment)
        assert opening, f"ERROR_REASON_{name}: its comment does not name a status code"
        table[name] = opening.group(1)
    return table


def _errors_by_rpc(proto: str = "auth_service.proto") -> dict[str, frozenset[str]]:
    """RPC name -> the reasons its comment lists after "Errors:"."""
    source = (PROTO_DIR / proto).read_text()
    table: dict[str, frozenset[str]] = {}
    for name, comment in _comment_blocks(source, r"rpc (\w+)\(").items():
        _, found, errors = comment.partition("Errors:")
        assert found, f"rpc {name}: no 'Errors:' list in its comment"
        table[name] = frozenset(re.findall(r"[A-Z][A-Z_]+[A-Z]", errors))
    return table


REASON_STATUS = _reason_status()
ERRORS_BY_RPC = _errors_by_rpc()
# AccountService: its RPC comments list what they answer besides the failures common to every
# call (common.proto: a caller without valid backend credentials gets PERMISSION_DENIED).
ACCOUNT_ERRORS_BY_RPC = {
    name: reasons | {"PERMISSION_DENIED"}
    for name, reasons in _errors_by_rpc("account_service.proto").items()
}
# Reasons an RPC may answer beyond those its proto comment lists (none: the comments are the
# contract).
EXTRA_REASONS: dict[str, frozenset[str]] = {}
NEEDS_RETRY_INFO = {"ACCOUNT_LOCKED"}
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def test_the_contract_read_from_the_protos_is_complete() -> None:
    enum_names = {
        value.name.removeprefix("ERROR_REASON_")
        for value in common_pb2.ErrorReason.DESCRIPTOR.values
        if value.number != 0
    }
    assert set(REASON_STATUS) == enum_names
    assert set(REASON_STATUS.values()) <= {code.name for code in grpc.StatusCode}
    service = pb.DESCRIPTOR.services_by_name["AuthService"]
    assert set(ERRORS_BY_RPC) == {method.name for method in service.methods}
    for rpc, reasons in ERRORS_BY_RPC.items():
        assert reasons and reasons <= enum_names, rpc


# ---- the server, in a thread with its own event loop ------------------------------------------


@dataclass
class Harness:
    """A running server plus real identifiers for the near-valid strategies."""

    loop: asyncio.AbstractEventLoop
    server: Server
    stub: pb_grpc.AuthServiceStub
    account_stub: Any
    outbox: Path
    clock: FrozenClock = field(default_factory=FrozenClock)
    alice: Seeded | None = None
    flows: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    session_tokens: list[str] = field(default_factory=list)
    device_tokens: list[str] = field(default_factory=list)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def messages(self, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
        """Wait until the `file` provider delivered `count` messages (poll, with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.outbox.read_text().splitlines() if self.outbox.exists() else []
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} delivered messages, got {len(lines)}")
            time.sleep(0.02)

    def send_code(self, flow_id: str) -> str:
        before = len(self.messages(0))
        self.stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
        text_ = self.messages(before + 1)[before]["text"]
        match = re.search(r"#(\d{6})$", text_)
        assert match, text_
        return match.group(1)


def _login(stub: pb_grpc.AuthServiceStub, who: Seeded) -> str:
    response = stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=who.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        ),
        timeout=CALL_TIMEOUT_S,
    )
    assert response.WhichOneof("result") == "pending_flow"
    return response.pending_flow.flow_id


def _prepare(harness: Harness) -> None:
    """Seed accounts and open real flows, codes and sessions for the near-valid strategies."""
    alice = harness.run(seed_account(harness.server, login="alice", phone=MOBILE))
    bob = harness.run(seed_account(harness.server, login="bob", phone=LANDLINE))
    harness.run(seed_account(harness.server, login="carol", siret=OTHER_SIRET))
    harness.alice = alice
    harness.flows += [_login(harness.stub, alice), _login(harness.stub, bob)]  # no code sent
    for _ in range(2):  # a code sent, waiting for Verify
        flow_id = _login(harness.stub, alice)
        harness.flows.append(flow_id)
        harness.codes.append(harness.send_code(flow_id))
    signed_in = _login(harness.stub, alice)  # completed: session and device token
    harness.flows.append(signed_in)
    verified = harness.stub.Verify(
        pb.VerifyRequest(flow_id=signed_in, code=harness.send_code(signed_in), client=CLIENT)
    )
    harness.session_tokens.append(verified.login.session.token)
    harness.device_tokens.append(verified.login.device_token)


async def _admin(admin_url: str, statement: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'authsvc.db'}"
        upgrade(url)
        yield url
        return
    template = request.getfixturevalue("postgres_template")  # conftest: skips if unreachable
    admin_url = os.environ.get(
        "AUTHSVC_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"authsvc_fuzz_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def harness(fuzz_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("fuzz-files")
    fuzz_settings = Settings(
        database_url=fuzz_database,
        secret_key_file=tmp / "secret.key",
        sms_provider="file",
        voice_provider="file",
        email_provider="file",
        outbox_file=tmp / "outbox.jsonl",
        dispatcher_poll_s=0.05,
        grace_period_s=0,
        api_keys=TEST_API_KEYS,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-server", daemon=True)
    thread.start()

    clock = FrozenClock()

    async def start() -> Server:
        server = await create_server(fuzz_settings, clock=clock, listen="127.0.0.1:0")
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    channel = sync_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)],
    )
    harness = Harness(
        loop=loop,
        server=server,
        stub=pb_grpc.AuthServiceStub(channel),
        account_stub=account_service_pb2_grpc.AccountServiceStub(channel),
        outbox=tmp / "outbox.jsonl",
        clock=clock,
    )
    try:
        _prepare(harness)
        yield harness
    finally:
        channel.close()
        harness.run(server.stop(grace=0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---- checking one call -------------------------------------------------------------------------


def _check_failure(error: grpc.Call, rpc: str, request: Any) -> str:
    code = error.code()
    where = f"{rpc}({request!r:.600}) -> {code.name}: {error.details()}"
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), where
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        # Refused by the transport before any handler runs (no ErrorInfo: not the API's answer).
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, where
        return "oversized"
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status: {where}"
    infos: list[error_details_pb2.ErrorInfo] = []
    retries: list[error_details_pb2.RetryInfo] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retries.append(retry)
    assert len(infos) == 1, f"expected exactly one ErrorInfo: {where}"
    info = infos[0]
    assert info.domain == DOMAIN, where
    assert info.reason in REASON_STATUS, f"reason {info.reason!r} is no ErrorReason: {where}"
    documented = ERRORS_BY_RPC.get(rpc) or ACCOUNT_ERRORS_BY_RPC[rpc]
    allowed = documented | EXTRA_REASONS.get(rpc, frozenset())
    assert info.reason in allowed, f"{rpc} does not document {info.reason}: {where}"
    assert code.name == REASON_STATUS[info.reason], f"{info.reason} with {code.name}: {where}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED or info.reason in NEEDS_RETRY_INFO:
        assert len(retries) == 1, f"{info.reason} without RetryInfo: {where}"
        assert retries[0].retry_delay.ToTimedelta().total_seconds() >= 0, where
    quotas = [d for d in status.details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    assert len(quotas) == (1 if info.reason == "RATE_LIMITED" else 0), where
    if info.reason == "INVALID_FIELD":
        assert info.metadata.get("field"), f"INVALID_FIELD without a field: {where}"
    if info.reason == "CODE_MISMATCH":
        remaining = info.metadata.get("attempts_remaining", "")
        assert remaining.isdigit() and int(remaining) < 5, where
    return str(info.reason)


def exercise(
    method: grpc.UnaryUnaryMultiCallable[Any, Any],
    request: Any,
    rpc: str,
    request_id: str | None,
    authorization: str | None = None,
) -> None:
    metadata: tuple[tuple[str, str], ...] = (
        () if request_id is None else (("x-request-id", request_id),)
    )
    if authorization is not None:  # replaces the test key the channel would send
        metadata += (("authorization", authorization),)
    try:
        _, call = method.with_call(request, metadata=metadata or None, timeout=CALL_TIMEOUT_S)
        trailing = call.trailing_metadata()
        event(f"{rpc}: OK")
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        outcome = _check_failure(error, rpc, request)
        event(f"{rpc}: {outcome}")  # shown by --hypothesis-show-statistics
        if outcome == "oversized":
            return
        trailing = error.trailing_metadata()
    echoed = [value for key, value in trailing or () if key == "x-request-id"]
    assert len(echoed) == 1 and isinstance(echoed[0], str), f"{rpc}: x-request-id {echoed}"
    if request_id is not None and REQUEST_ID.fullmatch(request_id):
        assert echoed[0] == request_id
    else:
        assert REQUEST_ID.fullmatch(echoed[0]), echoed[0]


# ---- strategies --------------------------------------------------------------------------------
#
# Each request field has a "valid" strategy (what a real backend would send, with the service's
# real identifiers) and a "wild" one (anything). A request takes every field valid, or exactly
# one field wild, or all fields wild: so that validation is fuzzed field by field and the paths
# behind it (credentials, flows, codes, sessions) are reached too.

CONTROL = st.characters(max_codepoint=0x1F) | st.sampled_from(
    ["\x7f", "\x85", "\u00a0", "\u200b", "\u2028", "\u202e", "\ufeff", "\U0010fffd"]
)
ASCII = st.characters(codec="ascii")
# Unicode category Cc only: C0 (NUL included), DEL, C1.
CONTROL_ONLY = st.characters(max_codepoint=0x1F) | st.characters(
    min_codepoint=0x7F, max_codepoint=0x9F
)
PRINTABLE_ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
URLSAFE = string.ascii_letters + string.digits + "-_"


# Integers written as text around the edges of 64-bit columns: at and past 2^63 (a BIGINT
# overflows), negative, and past 2^64. Every integer-ish string field gets these (page_token).
BIG_INTEGER_TEXT = st.one_of(
    st.sampled_from([str(2**63 - 1), str(2**63), "9999999999999999999", str(2**64), "-1", "0"]),
    st.integers(2**63 - 8, 2**80).map(str),
    st.integers(-(2**80), -1).map(str),
)


def with_control(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value of `strategy` (often a valid one) with a control character (NUL included)
    inserted somewhere: every string field must answer INVALID_FIELD for it."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        text_ = draw(strategy)
        where = draw(st.integers(0, len(text_)))
        return text_[:where] + draw(CONTROL_ONLY) + text_[where:]

    return build()


def wild_text() -> st.SearchStrategy[str]:
    """Empty, unicode, ASCII, control characters, big integers, and a few KB."""
    return st.one_of(
        st.just(""),
        st.text(max_size=40),
        st.text(ASCII, max_size=80),
        st.text(CONTROL | ASCII, min_size=1, max_size=20),
        BIG_INTEGER_TEXT,
        with_control(st.text(PRINTABLE_ASCII, max_size=40)),
        st.builds(
            lambda unit, times: unit * times,
            st.text(min_size=1, max_size=8),
            st.integers(16, 500),
        ),
    )


def wild_enum() -> st.SearchStrategy[int]:
    return st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 10)


def known_enum(enum: Any, *, unspecified: bool = True) -> st.SearchStrategy[int]:
    numbers = [value.number for value in enum.DESCRIPTOR.values]
    return st.sampled_from([number for number in numbers if unspecified or number != 0])


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _with_check_digit(body: str) -> str:
    return next(body + last for last in string.digits if _luhn_ok(body + last))


VALID_SIRET = st.sampled_from([SIRET, OTHER_SIRET]) | st.from_regex(r"\A[0-9]{13}\Z").map(
    _with_check_digit
)
WILD_SIRET = st.from_regex(r"\A[0-9]{12,15}\Z") | wild_text()
VALID_LOGIN = st.sampled_from(["alice", "bob", "carol", "ALICE"]) | st.from_regex(
    r"\A[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z"
)
WILD_LOGIN = st.sampled_from(["alice ", "al\u0131ce", "alice\x00", "a" * 65]) | wild_text()
VALID_PASSWORD = st.just(PASSWORD) | st.text(min_size=1, max_size=128)
WILD_PASSWORD = st.text(min_size=127, max_size=130) | wild_text()
VALID_IP = st.ip_addresses().map(str)
# Zone ids are refused (INVALID_FIELD): any text after the "%", as the fuzzer found.
SCOPED_IP = st.builds(lambda address, scope: f"{address}%{scope}", st.ip_addresses(v=6), st.text())
VALID_USER_AGENT = st.one_of(
    st.just(""),
    st.just("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"),
    st.text(st.characters(codec="ascii", min_codepoint=0x20, max_codepoint=0x7E), max_size=512),
    st.text(st.characters(categories=["L", "N", "P", "S"]), max_size=100),
)
WILD_USER_AGENT = st.text(min_size=510, max_size=514) | wild_text()
URLSAFE_TOKEN = st.text(URLSAFE, min_size=43, max_size=43)
WILD_TOKEN = st.text(URLSAFE, min_size=42, max_size=44) | wild_text()
VALID_CODE = st.from_regex(r"\A[0-9]{6}\Z")
WILD_CODE = st.one_of(
    st.text(st.characters(categories=["Nd"]), min_size=6, max_size=6),  # non-ASCII digits
    st.from_regex(r"\A[0-9]{5,7}\Z"),
    wild_text(),
)
WILD_FLOW_ID = st.one_of(
    st.uuids().map(lambda value: "--" + value.hex + "--"),  # 36 characters, odd spelling
    st.uuids().map(lambda value: "{" + value.hex + "}"),
    st.uuids().map(lambda value: value.urn),
    wild_text(),
)
VALID_IDEMPOTENCY_KEY = st.just("") | st.text(PRINTABLE_ASCII, min_size=1, max_size=128)
WILD_IDEMPOTENCY_KEY = st.text(ASCII, min_size=127, max_size=130) | wild_text()


@dataclass(frozen=True)
class Field:
    name: str
    valid: st.SearchStrategy[Any]
    wild: st.SearchStrategy[Any]


@st.composite
def draw_fields(draw: st.DrawFn, fields: list[Field]) -> dict[str, Any]:
    """Every field valid, or exactly one wild, or all wild."""
    mode = draw(st.sampled_from(["valid", "one wild", "all wild"]))
    wild_one = draw(st.sampled_from([one.name for one in fields]))
    drawn: dict[str, Any] = {}
    for one in fields:
        wild = mode == "all wild" or (mode == "one wild" and one.name == wild_one)
        value = draw(one.wild if wild else one.valid, label=one.name)
        if wild and isinstance(value, str) and draw(st.booleans()):
            # The near-valid value with a control character: only the character is wrong.
            value = draw(with_control(st.just(draw(one.valid))), label=f"{one.name}+control")
        drawn[one.name] = value
    return drawn


@st.composite
def client_contexts(draw: st.DrawFn, *, valid: bool) -> common_pb2.ClientContext | None:
    if valid:
        return common_pb2.ClientContext(
            ip_address=draw(VALID_IP), user_agent=draw(VALID_USER_AGENT)
        )
    if draw(st.booleans()):
        return None  # no client at all
    return common_pb2.ClientContext(
        ip_address=draw(VALID_IP | SCOPED_IP | wild_text()),
        user_agent=draw(VALID_USER_AGENT | WILD_USER_AGENT),
    )


CLIENT_FIELD = Field("client", client_contexts(valid=True), client_contexts(valid=False))


def _client(message: Any, client: common_pb2.ClientContext | None) -> Any:
    if client is not None:
        message.client.CopyFrom(client)
    return message


def request_ids() -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z"),
        st.sampled_from(["has space", "x" * 65, "a/b", "semi;colon", "("]),
    )


@st.composite
def login_requests(draw: st.DrawFn, harness: Harness) -> pb.LoginRequest:
    known_devices = st.sampled_from(harness.device_tokens)
    drawn = draw(
        draw_fields(
            [
                Field("organization_siret", VALID_SIRET, WILD_SIRET),
                Field("login", VALID_LOGIN, WILD_LOGIN),
                # The oneof credential: set (maybe to an empty password) or not.
                Field("password", VALID_PASSWORD, st.none() | WILD_PASSWORD),
                Field("device_token", st.just("") | known_devices | URLSAFE_TOKEN, WILD_TOKEN),
                CLIENT_FIELD,
            ]
        )
    )
    request = pb.LoginRequest(
        organization_siret=drawn["organization_siret"],
        login=drawn["login"],
        device_token=drawn["device_token"],
    )
    if drawn["password"] is not None:
        request.password.SetInParent()
        request.password.password = drawn["password"]
    return _client(request, drawn["client"])  # type: ignore[no-any-return]


def _flow_field(harness: Harness) -> Field:
    known = st.sampled_from(harness.flows)
    return Field("flow_id", known | st.uuids().map(str), known.map(str.upper) | WILD_FLOW_ID)


@st.composite
def challenge_requests(draw: st.DrawFn, harness: Harness) -> pb.ChallengeRequest:
    drawn = draw(
        draw_fields(
            [
                _flow_field(harness),
                Field("channel", known_enum(common_pb2.Channel), wild_enum()),
                Field("idempotency_key", VALID_IDEMPOTENCY_KEY, WILD_IDEMPOTENCY_KEY),
                CLIENT_FIELD,
            ]
        )
    )
    client = drawn.pop("client")
    return _client(pb.ChallengeRequest(**drawn), client)  # type: ignore[no-any-return]


@st.composite
def verify_requests(draw: st.DrawFn, harness: Harness) -> pb.VerifyRequest:
    drawn = draw(
        draw_fields(
            [
                _flow_field(harness),
                Field("code", st.sampled_from(harness.codes) | VALID_CODE, WILD_CODE),
                CLIENT_FIELD,
            ]
        )
    )
    client = drawn.pop("client")
    return _client(pb.VerifyRequest(**drawn), client)  # type: ignore[no-any-return]


@st.composite
def action_values(draw: st.DrawFn, *, valid: bool) -> pb.ActionValues | None:
    if not valid and draw(st.booleans()):
        return None
    values = pb.ActionValues(
        role=common_pb2.Role.ValueType(draw(known_enum(common_pb2.Role) if valid else wild_enum())),
        service_codes=draw(
            st.lists(st.sampled_from(["pensions", "careers"]) if valid else wild_text(), max_size=4)
        ),
    )
    for name, near_valid in (
        ("email", st.just("dana@example.fr")),
        ("phone", st.sampled_from([MOBILE, LANDLINE, "0612345678", "+33 6 12 34 56 78"])),
        ("display_name", st.just("Dana")),
        ("login", VALID_LOGIN),
    ):
        if draw(st.booleans()):
            setattr(values, name, draw(near_valid if valid else near_valid | wild_text()))
    return values


@st.composite
def authorize_requests(draw: st.DrawFn, harness: Harness) -> pb.AuthorizeSensitiveActionRequest:
    targets = [str(harness.alice.account_id)] if harness.alice else [""]
    drawn = draw(
        draw_fields(
            [
                Field(
                    "session_token",
                    st.sampled_from(harness.session_tokens) | URLSAFE_TOKEN,
                    WILD_TOKEN,
                ),
                Field(
                    "action",
                    known_enum(common_pb2.SensitiveAction, unspecified=False),
                    wild_enum(),
                ),
                Field(
                    "target_account_id",
                    st.sampled_from(["", *targets]) | st.uuids().map(str),
                    wild_text(),
                ),
                Field("new_values", action_values(valid=True), action_values(valid=False)),
                CLIENT_FIELD,
            ]
        )
    )
    client, values = drawn.pop("client"), drawn.pop("new_values")
    request = pb.AuthorizeSensitiveActionRequest(**drawn)
    if values is not None:
        request.new_values.CopyFrom(values)
    return _client(request, client)  # type: ignore[no-any-return]


def _session_fields(harness: Harness) -> list[Field]:
    known = st.sampled_from(harness.session_tokens)
    return [Field("session_token", known | URLSAFE_TOKEN, WILD_TOKEN), CLIENT_FIELD]


@st.composite
def validate_requests(draw: st.DrawFn, harness: Harness) -> pb.ValidateSessionRequest:
    drawn = draw(draw_fields(_session_fields(harness)))
    client = drawn.pop("client")
    return _client(pb.ValidateSessionRequest(**drawn), client)  # type: ignore[no-any-return]


@st.composite
def logout_requests(draw: st.DrawFn, harness: Harness) -> pb.LogoutRequest:
    drawn = draw(draw_fields(_session_fields(harness)))
    client = drawn.pop("client")
    return _client(pb.LogoutRequest(**drawn), client)  # type: ignore[no-any-return]


# ---- the properties, one per RPC ---------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_login_fuzz(harness: Harness, data: st.DataObject) -> None:
    request = data.draw(login_requests(harness), label="request")
    exercise(harness.stub.Login, request, "Login", data.draw(request_ids(), label="request_id"))


@FUZZ
@given(data=st.data())
def test_challenge_fuzz(harness: Harness, data: st.DataObject) -> None:
    request = data.draw(challenge_requests(harness), label="request")
    exercise(harness.stub.Challenge, request, "Challenge", data.draw(request_ids()))


@FUZZ
@given(data=st.data())
def test_verify_fuzz(harness: Harness, data: st.DataObject) -> None:
    request = data.draw(verify_requests(harness), label="request")
    exercise(harness.stub.Verify, request, "Verify", data.draw(request_ids()))


@FUZZ
@given(data=st.data())
def test_authorize_sensitive_action_fuzz(harness: Harness, data: st.DataObject) -> None:
    request = data.draw(authorize_requests(harness), label="request")
    exercise(
        harness.stub.AuthorizeSensitiveAction,
        request,
        "AuthorizeSensitiveAction",
        data.draw(request_ids()),
    )


@FUZZ
@given(data=st.data())
def test_validate_session_fuzz(harness: Harness, data: st.DataObject) -> None:
    request = data.draw(validate_requests(harness), label="request")
    exercise(harness.stub.ValidateSession, request, "ValidateSession", data.draw(request_ids()))


@FUZZ
@given(data=st.data())
def test_logout_fuzz(harness: Harness, data: st.DataObject) -> None:
    request = data.draw(logout_requests(harness), label="request")
    exercise(harness.stub.Logout, request, "Logout", data.draw(request_ids()))


def test_server_still_answers_after_the_fuzzing(harness: Harness) -> None:
    """Nothing the fuzzers sent broke the server: a fresh login still works end to end."""
    assert harness.alice is not None
    # The fuzzers' wrong passwords and codes locked alice and spent her rate limits, as they
    # should: a day later every lock has lifted (at most 24 h) and every bucket refilled.
    harness.clock.advance(86400 + 1)
    flow_id = _login(harness.stub, harness.alice)
    verified = harness.stub.Verify(
        pb.VerifyRequest(flow_id=flow_id, code=harness.send_code(flow_id), client=CLIENT)
    )
    info = harness.stub.ValidateSession(
        pb.ValidateSessionRequest(session_token=verified.login.session.token, client=CLIENT)
    )
    assert info.account_id == str(harness.alice.account_id)


def test_oversized_request_is_refused_by_the_transport(harness: Harness) -> None:
    request = pb.LoginRequest(
        organization_siret=SIRET,
        login="alice",
        password=pb.PasswordCredential(password="x" * (MAX_MESSAGE_BYTES + 1)),
        client=CLIENT,
    )
    with pytest.raises(grpc.RpcError) as refused:
        harness.stub.Login(request, timeout=CALL_TIMEOUT_S)
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---- what the fuzzers found, pinned as examples -----------------------------------------------

SCOPED_IPV6 = [
    pytest.param("fe80::1%" + "a" * 80, id="long-scope"),
    pytest.param("fe80::1%\x00", id="nul-scope"),
]


@pytest.mark.parametrize("ip_address", SCOPED_IPV6)
async def test_scoped_ipv6_address_is_refused_or_stored(
    stub: AsyncStub,
    alice: Seeded,
    database_url: str,
    ip_address: str,
    request: pytest.FixtureRequest,
) -> None:
    """An IPv6 address with a zone (scope) id passes `ipaddress`, whatever the zone: long, or with
    control characters. The service must refuse it as INVALID_FIELD or store it; on PostgreSQL it
    overflows VARCHAR(64) (flows.ip_address) or holds a NUL, and the call answers INTERNAL."""
    call = stub.Login(
        pb.LoginRequest(
            organization_siret=alice.organization_siret,
            login=alice.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=common_pb2.ClientContext(ip_address=ip_address, user_agent="pytest"),
        )
    )
    try:
        response = await call
    except grpc.aio.AioRpcError:
        refused = await failure_of(call)
        assert (refused.code, refused.reason, refused.metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "client.ip_address",
        )
    else:
        assert response.WhichOneof("result") == "pending_flow"


async def test_send_limit_reached_carries_retry_info(
    stub: AsyncStub, alice: Seeded, clock: FrozenClock
) -> None:
    pending = (
        await stub.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=alice.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            )
        )
    ).pending_flow
    for _ in range(5):
        await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
        clock.advance(30)
    capped = await failure_of(
        stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    )
    assert (capped.code, capped.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SEND_LIMIT_REACHED",
    )
    # "retry_delay is how long the last code sent stays valid": sent 30 s ago, 300 s lifetime.
    assert capped.retry_after == pytest.approx(270)


# ---- RedeemActionGrant, AccountService, and the caller's credentials ---------------------------
#
# Requests built from the message descriptors: every string wild (or, for tokens, a real
# session token or a well-formed one), every enum any number, nested messages recursively.


def _message_strategy(descriptor: Any, harness: Harness, depth: int = 0) -> st.SearchStrategy[Any]:
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field_ in descriptor.fields:
        name = field_.name
        if field_.type == field_.TYPE_MESSAGE:
            if depth > 2 or field_.message_type.full_name.startswith("google.protobuf"):
                continue
            if field_.message_type.name == "ClientContext":
                inner: st.SearchStrategy[Any] = client_contexts(valid=True) | client_contexts(
                    valid=False
                )
            else:
                inner = _message_strategy(field_.message_type, harness, depth + 1)
            fields[name] = st.none() | inner
        elif field_.type == field_.TYPE_STRING:
            if name.endswith("token"):
                real = st.sampled_from(harness.session_tokens) if harness.session_tokens else None
                base = URLSAFE_TOKEN | WILD_TOKEN
                text_ = real | base if real is not None else base
            else:
                text_ = wild_text()
            text_ = text_ | with_control(text_)
            fields[name] = st.lists(text_, max_size=3) if _repeated(field_) else text_
        elif field_.type == field_.TYPE_ENUM:
            numbers = [value.number for value in field_.enum_type.values]
            values = wild_enum() | st.sampled_from(numbers)
            fields[name] = st.lists(values, max_size=3) if _repeated(field_) else values
        elif field_.type == field_.TYPE_BOOL:
            fields[name] = st.booleans()
        elif field_.type in (field_.TYPE_INT32, field_.TYPE_INT64, field_.TYPE_UINT32):
            fields[name] = (
                st.integers(0, 2**31 - 1)
                if field_.type == field_.TYPE_UINT32
                else (st.integers(-(2**31), 2**31 - 1))
            )
            if field_.type == field_.TYPE_INT64:
                fields[name] = fields[name] | st.sampled_from([2**63 - 1, -(2**63)])

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        message = cls()
        for name, strategy in fields.items():
            value = draw(strategy, label=name)
            if value is None:
                continue
            target = getattr(message, name)
            if isinstance(value, list):
                target.extend(value)
            elif hasattr(value, "DESCRIPTOR"):
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()


def _repeated(field_: Any) -> bool:
    return bool(field_.is_repeated) if hasattr(field_, "is_repeated") else field_.label == 3


ACCOUNT_SERVICE = account_service_pb2.DESCRIPTOR.services_by_name["AccountService"]
GENERIC_RPCS = [("AuthService", "RedeemActionGrant")] + [
    ("AccountService", method.name) for method in ACCOUNT_SERVICE.methods
]


def test_the_account_service_contract_is_read_too() -> None:
    assert set(ACCOUNT_ERRORS_BY_RPC) == {method.name for method in ACCOUNT_SERVICE.methods}


@pytest.mark.parametrize(("service", "rpc"), GENERIC_RPCS, ids=[rpc for _, rpc in GENERIC_RPCS])
def test_descriptor_driven_fuzz(harness: Harness, service: str, rpc: str) -> None:
    if service == "AuthService":
        method_descriptor = pb.DESCRIPTOR.services_by_name[service].methods_by_name[rpc]
        method = getattr(harness.stub, rpc)
    else:
        method_descriptor = ACCOUNT_SERVICE.methods_by_name[rpc]
        method = getattr(harness.account_stub, rpc)
    requests = _message_strategy(method_descriptor.input_type, harness)

    @settings(
        max_examples=GENERIC_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        request = data.draw(requests, label="request")
        exercise(method, request, rpc, data.draw(request_ids()))

    run()


AUTHORIZATION = st.one_of(
    st.just(""),
    st.builds(lambda key: f"Bearer {key}", st.text(URLSAFE, max_size=80)),
    st.builds(lambda key: f"bearer {key}", st.just("authsvc_") | st.text(URLSAFE, max_size=60)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    st.builds(lambda n: "Bearer " + "k" * n, st.integers(100, 8000)),
)


@FUZZ
@given(data=st.data())
def test_api_key_metadata_fuzz(harness: Harness, data: st.DataObject) -> None:
    """Random credentials: always PERMISSION_DENIED, with its ErrorInfo; never anything else."""
    authorization = data.draw(AUTHORIZATION, label="authorization")
    request = data.draw(login_requests(harness), label="request")
    try:
        harness.stub.Login.with_call(
            request,
            metadata=(("authorization", authorization),),
            timeout=CALL_TIMEOUT_S,
        )
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        if len(authorization) > 4000 and error.code() != grpc.StatusCode.PERMISSION_DENIED:
            # Past the metadata limit the transport itself refuses the headers.
            assert error.code() in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNAVAILABLE,
            ), error.code()
            return
        assert _check_failure(error, "Login", request) == "PERMISSION_DENIED"
        return
    raise AssertionError(f"a call with authorization {authorization!r:.80} succeeded")


# ---- federated assertions: JOSE headers of every JSON type -------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def assertions(draw: st.DrawFn) -> str:
    """A compact JWS whose header fields (alg, kid, typ, crit, ...) take any JSON value, with
    a plausible or random payload and a garbage signature."""
    header = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "alg": JSON_VALUES | st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256"]),
                "kid": JSON_VALUES,
                "typ": JSON_VALUES,
                "crit": JSON_VALUES,
                "jku": JSON_VALUES,
            },
        )
    )
    top = draw(st.sampled_from(["object", "other"]))
    header_json = json.dumps(header if top == "object" else draw(JSON_VALUES))
    payload = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "iss": JSON_VALUES | st.just("https://idp.example"),
                "sub": JSON_VALUES,
                "aud": JSON_VALUES | st.just("authsvc"),
                "exp": JSON_VALUES | st.floats() | st.integers(2**63 - 1, 2**70),
                "iat": JSON_VALUES | st.floats(),
                "siret": JSON_VALUES | st.just(SIRET),
            },
        )
    )
    signature = draw(st.binary(max_size=64))
    return ".".join(
        [_b64(header_json.encode()), _b64(json.dumps(payload).encode()), _b64(signature)]
    )


# NOTE for the integrator: until the federated parser's fix (a non-string `alg` such as a list
# or an object crashed `alg in ACCEPTED`, INTERNAL) is merged, this property fails on a branch
# without that fix. It is meant to pass after the merge; do not mark it xfail.
@FUZZ
@given(data=st.data())
def test_federated_assertion_jose_header_fuzz(harness: Harness, data: st.DataObject) -> None:
    assertion = data.draw(assertions(), label="assertion")
    if data.draw(st.booleans(), label="via Login"):
        request: Any = pb.LoginRequest(
            federated=pb.FederatedCredential(assertion=assertion), client=CLIENT
        )
        exercise(harness.stub.Login, request, "Login", None)
        return
    token = harness.session_tokens[0] if harness.session_tokens else "A" * 43
    request = account_service_pb2.LinkFederatedIdentityRequest(
        session_token=token, assertion=assertion, client=CLIENT
    )
    exercise(harness.account_stub.LinkFederatedIdentity, request, "LinkFederatedIdentity", None)


# ---- raw bodies: undecodable (or accidentally decodable) bytes to every RPC --------------------


@dataclass(frozen=True)
class RawBody:
    """What _check_failure needs of a request, for bytes sent as they are."""

    body: bytes

    def ByteSize(self) -> int:
        return len(self.body)


ALL_RPCS = [
    (pb.DESCRIPTOR.services_by_name["AuthService"].full_name, method.name)
    for method in pb.DESCRIPTOR.services_by_name["AuthService"].methods
] + [(ACCOUNT_SERVICE.full_name, method.name) for method in ACCOUNT_SERVICE.methods]
RAW_BODIES = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.sampled_from([b"\xff", b"\x0a\xff", b"\x08", b"\x0f", b"\x0a\x02\xc3\x28"]),
    # A valid-looking tag followed by junk.
    st.builds(lambda tag, rest: bytes([tag]) + rest, st.integers(0, 255), st.binary(max_size=16)),
)


@pytest.mark.parametrize(("service", "rpc"), ALL_RPCS, ids=[rpc for _, rpc in ALL_RPCS])
def test_raw_body_fuzz(harness: Harness, service: str, rpc: str) -> None:
    """Bytes that are not (or are, by chance) a message of the RPC: never UNKNOWN/INTERNAL;
    an undecodable body answers INVALID_FIELD ("request") like any bad field."""
    channel = sync_channel(f"127.0.0.1:{harness.server.port}")
    # The body goes on the wire as it is (no serializer of a message class).
    method: Any = channel.unary_unary(f"/{service}/{rpc}", lambda raw: raw.body, None)

    @settings(
        max_examples=GENERIC_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=RAW_BODIES, request_id=request_ids())
    def run(body: bytes, request_id: str | None) -> None:
        exercise(method, RawBody(body), rpc, request_id)

    try:
        run()
    finally:
        channel.close()

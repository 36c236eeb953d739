"""Federated login (Net-entreprises) under the same two-factor policy, and every bad assertion."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select
from support import (
    CLIENT,
    LANDLINE,
    MOBILE,
    OTHER_SIRET,
    PASSWORD,
    SIRET,
    Inbox,
    Seeded,
    aio_channel,
    failure_of,
    seed_account,
    sign_in,
)

from authsvc.clock import FrozenClock
from authsvc.config import DEV_ISSUER, Settings
from authsvc.db import AuditEvent, Role
from authsvc.federation import devidp
from authsvc.server import Server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import account_service_pb2_grpc, common_pb2
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.account_service_pb2_grpc import AccountServiceAsyncStub
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub


@pytest.fixture
def idp(tmp_path: Path) -> Path:
    directory = tmp_path / "idp"
    devidp.keygen(directory)
    return directory


@pytest.fixture
def settings(settings: Settings, idp: Path) -> Settings:
    return settings.model_copy(
        update={
            "federation_issuers": Settings(
                federation_issuers=[{"issuer": DEV_ISSUER, "jwks_file": str(idp / devidp.JWKS)}]
            ).federation_issuers,
            "federation_jwks_min_refresh_s": 0.0,
        }
    )


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> AccountServiceAsyncStub:
    return account_service_pb2_grpc.AccountServiceStub(channel)


def mint(idp: Path, clock: FrozenClock, sub: str = "ne-alice", **changes: Any) -> str:
    token = devidp.mint(
        idp,
        subject=sub,
        siret=changes.pop("siret", SIRET),
        ttl_s=changes.pop("ttl", 120),
        audience=changes.pop("aud", "authsvc"),
        issuer=changes.pop("iss", DEV_ISSUER),
        now=clock.now().timestamp() + changes.pop("shift", 0),
    )
    return token


def federated(
    assertion: str, device_token: str = "", organization_siret: str = ""
) -> pb.LoginRequest:
    return pb.LoginRequest(
        federated=pb.FederatedCredential(assertion=assertion),
        device_token=device_token,
        organization_siret=organization_siret,
        client=CLIENT,
    )


async def link_own(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    session: str,
    assertion: str,
    phone: str = MOBILE,
) -> pb.VerifyResponse:
    flow = (
        await accounts.LinkFederatedIdentity(
            apb.LinkFederatedIdentityRequest(
                session_token=session, assertion=assertion, client=CLIENT
            )
        )
    ).pending_flow
    assert flow.purpose == common_pb2.FLOW_PURPOSE_FEDERATED_LINK
    await stub.Challenge(pb.ChallengeRequest(flow_id=flow.flow_id, client=CLIENT))
    code = await inbox.code_to(phone)
    return await stub.Verify(pb.VerifyRequest(flow_id=flow.flow_id, code=code, client=CLIENT))


async def test_federated_login_follows_the_same_cadence(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
) -> None:
    not_linked = await failure_of(stub.Login(federated(mint(idp, clock))))
    assert (not_linked.code, not_linked.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDENTITY_NOT_LINKED",
    )

    session = (await sign_in(stub, inbox, alice)).session.token  # password + code first
    linked = await link_own(stub, accounts, inbox, session, mint(idp, clock))
    assert linked.federated_link.linked and linked.federated_link.issuer == DEV_ISSUER

    # First federated login of this browser: a code, like a password login.
    first = await stub.Login(federated(mint(idp, clock)))
    assert first.HasField("pending_flow")
    await stub.Challenge(pb.ChallengeRequest(flow_id=first.pending_flow.flow_id, client=CLIENT))
    verified = await stub.Verify(
        pb.VerifyRequest(
            flow_id=first.pending_flow.flow_id, code=await inbox.code_to(MOBILE), client=CLIENT
        )
    )
    device = verified.login.device_token
    clock.advance(6 * 86400)
    assert (await stub.Login(federated(mint(idp, clock), device))).HasField("session")
    clock.advance(86400)  # 7 days after the code: the code again
    assert (await stub.Login(federated(mint(idp, clock), device))).HasField("pending_flow")
    # Organisation and login, when given, must match the linked account.
    wrong_org = await failure_of(
        stub.Login(federated(mint(idp, clock), organization_siret=OTHER_SIRET))
    )
    assert wrong_org.reason == "SIRET_MISMATCH"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(idp: Path, clock: FrozenClock) -> str:
    """The classic confusion attack: HMAC keyed with the issuer's PUBLIC key."""
    public = json.loads((idp / devidp.JWKS).read_text())["keys"][0]
    now = int(clock.now().timestamp())
    header = _b64(json.dumps({"alg": "HS256", "kid": public["kid"]}).encode())
    payload = _b64(
        json.dumps(
            {
                "iss": DEV_ISSUER,
                "aud": "authsvc",
                "sub": "ne-alice",
                "siret": SIRET,
                "iat": now,
                "exp": now + 60,
                "jti": "confused",
            }
        ).encode()
    )
    signature = hmac.new(
        json.dumps(public).encode(), f"{header}.{payload}".encode(), hashlib.sha256
    ).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _unsigned(clock: FrozenClock) -> str:
    now = int(clock.now().timestamp())
    return jwt.encode(
        {
            "iss": DEV_ISSUER,
            "aud": "authsvc",
            "sub": "ne-alice",
            "siret": SIRET,
            "iat": now,
            "exp": now + 60,
            "jti": "none",
        },
        None,  # type: ignore[arg-type]  # an unsigned token, on purpose
        algorithm="none",
    )


def _without(idp: Path, clock: FrozenClock, claim: str) -> str:
    """A validly signed assertion that lacks one claim."""
    claims = jwt.decode(mint(idp, clock), options={"verify_signature": False})
    del claims[claim]
    key = (idp / devidp.PRIVATE_KEY).read_bytes()
    return jwt.encode(
        claims, key, algorithm="ES256", headers={"kid": (idp / "dev-idp-kid").read_text()}
    )


def _tampered(idp: Path, clock: FrozenClock) -> str:
    header, payload, signature = mint(idp, clock).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "ne-mallory"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _odd_header(idp: Path, clock: FrozenClock, **header: object) -> str:
    """A header PyJWT refuses to read (found by review: it used to answer INTERNAL)."""
    _, payload, signature = mint(idp, clock).split(".")
    return f"{_b64(json.dumps({'alg': 'ES256', **header}).encode())}.{payload}.{signature}"


def _unknown_kid(idp: Path, clock: FrozenClock) -> str:
    claims = jwt.decode(mint(idp, clock), options={"verify_signature": False})
    return jwt.encode(
        claims,
        (idp / devidp.PRIVATE_KEY).read_bytes(),
        algorithm="ES256",
        headers={"kid": "not-a-kid"},
    )


BAD = [
    ("expired", lambda i, c: mint(i, c, shift=-400), "ASSERTION_EXPIRED", None),
    ("not yet valid", lambda i, c: mint(i, c, shift=120), "ASSERTION_NOT_YET_VALID", None),
    ("too long-lived", lambda i, c: mint(i, c, ttl=600), "ASSERTION_LIFETIME_TOO_LONG", None),
    (
        "wrong audience",
        lambda i, c: mint(i, c, aud="another-service"),
        "ASSERTION_AUDIENCE_MISMATCH",
        None,
    ),
    (
        "unknown issuer",
        lambda i, c: mint(i, c, iss="https://idp.evil.example"),
        "ASSERTION_ISSUER_UNKNOWN",
        None,
    ),
    ("bad signature", _tampered, "ASSERTION_SIGNATURE_INVALID", None),
    ("alg none", lambda i, c: _unsigned(c), "ASSERTION_ALGORITHM_REFUSED", None),
    ("HS256 with the public key", _hs256_with_public_key, "ASSERTION_ALGORITHM_REFUSED", None),
    ("unknown kid", _unknown_kid, "ASSERTION_KEY_UNKNOWN", None),
    ("no jti", lambda i, c: _without(i, c, "jti"), "ASSERTION_CLAIM_MISSING", "jti"),
    ("no siret", lambda i, c: _without(i, c, "siret"), "ASSERTION_CLAIM_MISSING", "siret"),
    ("no sub", lambda i, c: _without(i, c, "sub"), "ASSERTION_CLAIM_MISSING", "sub"),
    ("oversize", lambda i, c: "e" * 9000, "ASSERTION_TOO_LARGE", None),
    ("not a JWS", lambda i, c: "not.a-jws", "ASSERTION_MALFORMED", None),
    ("kid not a string", lambda i, c: _odd_header(i, c, kid=123), "ASSERTION_MALFORMED", None),
]


@pytest.mark.parametrize(("case", "make", "reason", "claim"), BAD, ids=[b[0] for b in BAD])
async def test_each_bad_assertion_has_its_own_reason_and_is_audited(
    stub: Stub,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
    server: Server,
    case: str,
    make: Any,
    reason: str,
    claim: str | None,
) -> None:
    refused = await failure_of(stub.Login(federated(make(idp, clock))))
    assert refused.reason == reason, case
    assert refused.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
    if claim:
        assert refused.metadata == {"claim": claim}
    async with server.app.read() as db:
        outcomes = list(
            await db.scalars(
                select(AuditEvent.outcome).where(AuditEvent.event_type == "login.federated")
            )
        )
    assert outcomes == [reason]


async def test_replayed_assertion_and_siret_mismatch(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    await link_own(stub, accounts, inbox, session, mint(idp, clock))
    once = mint(idp, clock)
    await stub.Login(federated(once))
    replay = await failure_of(stub.Login(federated(once)))
    assert (replay.code, replay.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_REPLAYED")
    other_org = await failure_of(stub.Login(federated(mint(idp, clock, siret=OTHER_SIRET))))
    assert (other_org.code, other_org.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "SIRET_MISMATCH",
    )


async def test_admin_proposes_member_links_and_unlinks_with_codes(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    server: Server,
    idp: Path,
    clock: FrozenClock,
) -> None:
    # Rule changed by issue 11 (item 1): an administrator's named subject only proposes; the
    # holder links it from their own session with an assertion of it (and a code).
    admin = await seed_account(server, login="admin", role=Role.ADMIN)
    member = await seed_account(server, login="member", phone=LANDLINE)
    admin_session = (await sign_in(stub, inbox, admin)).session.token
    subject = apb.FederatedSubject(issuer=DEV_ISSUER, subject="ne-member")
    proposed = await accounts.LinkFederatedIdentity(
        apb.LinkFederatedIdentityRequest(
            session_token=admin_session,
            target_account_id=str(member.account_id),
            subject=subject,
            client=CLIENT,
        )
    )
    assert proposed.proposed_to_holder and not proposed.HasField("pending_flow")
    assert "Net-entreprises" in (await inbox.next_to("member@example.fr"))["text"]
    member_session = (await sign_in(stub, inbox, member, phone=LANDLINE)).session.token
    done = await link_own(
        stub, accounts, inbox, member_session, mint(idp, clock, sub="ne-member"), LANDLINE
    )
    notice = await inbox.next_to("member@example.fr")  # and the holder is told
    assert "Net-entreprises" in notice["text"]
    assert done.federated_link.account_id == str(member.account_id)
    again = await failure_of(
        accounts.LinkFederatedIdentity(
            apb.LinkFederatedIdentityRequest(
                session_token=admin_session,
                target_account_id=str(admin.account_id),
                subject=subject,
            )
        )
    )
    assert again.reason == "PERMISSION_DENIED"  # never onto an administrator

    assert (await stub.Login(federated(mint(idp, clock, sub="ne-member")))).HasField("pending_flow")
    denied = await failure_of(
        accounts.LinkFederatedIdentity(
            apb.LinkFederatedIdentityRequest(
                session_token=member_session,
                subject=apb.FederatedSubject(issuer=DEV_ISSUER, subject="ne-someone"),
            )
        )
    )
    assert denied.reason == "PERMISSION_DENIED"
    unlink = (
        await accounts.UnlinkFederatedIdentity(
            apb.UnlinkFederatedIdentityRequest(
                session_token=member_session, issuer=DEV_ISSUER, client=CLIENT
            )
        )
    ).pending_flow
    assert unlink.purpose == common_pb2.FLOW_PURPOSE_FEDERATED_UNLINK
    await stub.Challenge(pb.ChallengeRequest(flow_id=unlink.flow_id, client=CLIENT))
    gone = await stub.Verify(
        pb.VerifyRequest(flow_id=unlink.flow_id, code=await inbox.code_to(LANDLINE), client=CLIENT)
    )
    assert not gone.federated_link.linked
    after = await failure_of(stub.Login(federated(mint(idp, clock, sub="ne-member"))))
    assert after.reason == "IDENTITY_NOT_LINKED"


async def test_unlinking_ends_what_the_identity_opened(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
) -> None:
    """An identity unlinked (taken over, say) leaves no session or trusted device behind; the
    holder's session that unlinked it stays (before: the federated session lived on)."""
    own = (await sign_in(stub, inbox, alice)).session.token
    await link_own(stub, accounts, inbox, own, mint(idp, clock))
    first = await stub.Login(federated(mint(idp, clock)))
    await stub.Challenge(pb.ChallengeRequest(flow_id=first.pending_flow.flow_id, client=CLIENT))
    through_it = (
        await stub.Verify(
            pb.VerifyRequest(
                flow_id=first.pending_flow.flow_id,
                code=await inbox.code_to(MOBILE),
                client=CLIENT,
            )
        )
    ).login
    unlink = (
        await accounts.UnlinkFederatedIdentity(
            apb.UnlinkFederatedIdentityRequest(session_token=own, issuer=DEV_ISSUER, client=CLIENT)
        )
    ).pending_flow
    await stub.Challenge(pb.ChallengeRequest(flow_id=unlink.flow_id, client=CLIENT))
    await stub.Verify(
        pb.VerifyRequest(flow_id=unlink.flow_id, code=await inbox.code_to(MOBILE), client=CLIENT)
    )
    ended = await failure_of(
        stub.ValidateSession(pb.ValidateSessionRequest(session_token=through_it.session.token))
    )
    assert (ended.code, ended.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
    kept = await stub.ValidateSession(pb.ValidateSessionRequest(session_token=own))
    assert kept.account_id == str(alice.account_id)
    # The device the federated login trusted asks for a code again (password login).
    again = await stub.Login(
        pb.LoginRequest(
            organization_siret=alice.organization_siret,
            login=alice.login,
            password=pb.PasswordCredential(password=PASSWORD),
            device_token=through_it.device_token,
            client=CLIENT,
        )
    )
    assert again.HasField("pending_flow")


# ---- keys published at a URL, rotated ------------------------------------------------------


@pytest.fixture
def jwks_server(idp: Path) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (idp / devidp.JWKS).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_address[1]}/jwks.json"
    http.shutdown()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_jwks_rotation_at_a_url_is_picked_up(
    settings: Settings, jwks_server: str, idp: Path, clock: FrozenClock, tmp_path: Path
) -> None:
    from support import seed_account as seed

    from authsvc.server import create_server

    by_url = settings.model_copy(
        update={
            "federation_issuers": Settings(
                federation_issuers=[{"issuer": DEV_ISSUER, "jwks_url": jwks_server}]
            ).federation_issuers
        }
    )
    server = await create_server(by_url, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            from authsvc.v1 import auth_service_pb2_grpc

            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await seed(server)
            before = await failure_of(stub.Login(federated(mint(idp, clock))))
            assert before.reason == "IDENTITY_NOT_LINKED"  # verified with the first key
            devidp.keygen(idp)  # rotation: a new kid, published beside the old one
            after = await failure_of(stub.Login(federated(mint(idp, clock))))
            assert after.reason == "IDENTITY_NOT_LINKED"  # the new kid was fetched and verified
    finally:
        await server.stop(grace=0)


async def test_unverified_assertions_have_a_per_ip_limit_of_their_own(
    settings: Settings, idp: Path, clock: FrozenClock
) -> None:
    """Before verification an assertion spends only its client's network, in a budget apart
    from the password logins' (issue 11: a forger must not spend anyone else's budget)."""
    from support import aio_channel

    from authsvc.config import Rate
    from authsvc.server import create_server
    from authsvc.v1 import auth_service_pb2_grpc

    limits = settings.rate_limits.model_copy(
        update={"login_federated_ip": Rate(count=3, period_s=60)}
    )
    server = await create_server(
        settings.model_copy(update={"rate_limits": limits}), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            for _ in range(3):
                assert (await failure_of(stub.Login(federated("not.a-jws")))).reason == (
                    "ASSERTION_MALFORMED"
                )
            limited = await failure_of(stub.Login(federated(mint(idp, clock))))
            assert (limited.code, limited.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
            )
            assert limited.retry_after == pytest.approx(20)
    finally:
        await server.stop(grace=0)


# ---- review of issue 11: links only by the holder, odd headers and dates --------------------


async def test_an_admin_holding_the_members_phone_cannot_link_their_own_subject(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    server: Server,
    idp: Path,
    clock: FrozenClock,
) -> None:
    """Attack (issue 11, item 1): the admin has put the member's phone on a SIM they hold (the
    member's LANDLINE stands for it: the test reads it as the admin would), then names their own
    subject for the member. Before the fix the code reached that SIM and the admin logged in by
    federation as the member."""
    admin = await seed_account(server, login="admin", role=Role.ADMIN)
    member = await seed_account(server, login="member", phone=LANDLINE)
    admin_session = (await sign_in(stub, inbox, admin)).session.token
    sent_before = len(inbox.messages())
    answer = await accounts.LinkFederatedIdentity(
        apb.LinkFederatedIdentityRequest(
            session_token=admin_session,
            target_account_id=str(member.account_id),
            subject=apb.FederatedSubject(issuer=DEV_ISSUER, subject="ne-admin-own"),
            client=CLIENT,
        )
    )
    assert answer.proposed_to_holder and not answer.HasField("pending_flow")
    proposal = await inbox.next_to("member@example.fr")  # the holder is told, in plain words
    assert "propose de lier une identité Net-entreprises" in proposal["text"]
    assert "sans votre mot de passe" in proposal["text"]
    assert "Rien n'est lié tant que vous ne le faites pas vous-même" in proposal["text"]
    later = inbox.messages()[sent_before:]
    assert [m for m in later if m["to"] == LANDLINE] == []  # no consent code to the phone
    refused = await failure_of(stub.Login(federated(mint(idp, clock, sub="ne-admin-own"))))
    assert refused.reason == "IDENTITY_NOT_LINKED"
    async with server.app.read() as db:
        events = list(
            await db.scalars(
                select(AuditEvent.event_type).where(AuditEvent.event_type.like("federation.link%"))
            )
        )
    assert events == ["federation.link_proposed"]

    # The holder accepts from their own session, with an assertion of the identity.
    member_session = (await sign_in(stub, inbox, member, phone=LANDLINE)).session.token
    done = await link_own(
        stub, accounts, inbox, member_session, mint(idp, clock, sub="ne-member"), LANDLINE
    )
    assert done.federated_link.account_id == str(member.account_id)
    # The holder's code says what it consents to, not the generic step-up wording.
    link_code = [m for m in inbox.messages() if m["to"] == LANDLINE][-1]["text"]
    assert "lier une identité Net-entreprises" in link_code  # a landline: the voice text
    assert "sans votre mot de passe" in link_code


async def test_a_foreign_admin_cannot_squat_another_organisations_subject(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    server: Server,
    idp: Path,
    clock: FrozenClock,
) -> None:
    """Attack (issue 11, item 9): the admin of organisation A names the subject of Bob, a person
    of organisation B, for an accomplice of A. Before the fix Bob's own link answered
    IDENTITY_ALREADY_LINKED and his refused logins landed, with his IP, in A's audit trail."""
    admin = await seed_account(server, login="admin", role=Role.ADMIN)
    accomplice = await seed_account(server, login="accomplice", phone=LANDLINE)
    bob = await seed_account(server, login="bob", siret=OTHER_SIRET)
    admin_session = (await sign_in(stub, inbox, admin)).session.token
    answer = await accounts.LinkFederatedIdentity(
        apb.LinkFederatedIdentityRequest(
            session_token=admin_session,
            target_account_id=str(accomplice.account_id),
            subject=apb.FederatedSubject(issuer=DEV_ISSUER, subject="ne-bob"),
            client=CLIENT,
        )
    )
    if answer.HasField("pending_flow"):  # the old rule: the accomplice hands the code over
        flow = answer.pending_flow.flow_id
        await stub.Challenge(pb.ChallengeRequest(flow_id=flow, client=CLIENT))
        code = await inbox.code_to(LANDLINE)
        await stub.Verify(pb.VerifyRequest(flow_id=flow, code=code, client=CLIENT))
    # An assertion of Bob's subject for A's SIRET does not exist; a forged claim does not help.
    squat = await failure_of(stub.Login(federated(mint(idp, clock, sub="ne-bob"))))
    assert squat.reason == "IDENTITY_NOT_LINKED"

    bob_session = (await sign_in(stub, inbox, bob)).session.token
    linked = await link_own(
        stub, accounts, inbox, bob_session, mint(idp, clock, sub="ne-bob", siret=OTHER_SIRET)
    )
    assert linked.federated_link.account_id == str(bob.account_id)
    # A refused portal login of Bob's (wrong organisation chosen) is audited in nobody's trail.
    wrong = await failure_of(
        stub.Login(
            federated(mint(idp, clock, sub="ne-bob", siret=OTHER_SIRET), organization_siret=SIRET)
        )
    )
    assert wrong.reason == "SIRET_MISMATCH"
    async with server.app.read() as db:
        organizations = list(
            await db.scalars(
                select(AuditEvent.organization_id).where(
                    AuditEvent.event_type == "login.federated", AuditEvent.outcome != "OK"
                )
            )
        )
    assert organizations == [None, None]  # IDENTITY_NOT_LINKED above, SIRET_MISMATCH here


def _signed_with_header(idp: Path, clock: FrozenClock, header: dict[str, object]) -> str:
    """A VALID signature of the dev issuer over a header of any JSON shape."""
    claims = jwt.decode(mint(idp, clock), options={"verify_signature": False})
    return _signed(idp, header, claims)


def _signed(idp: Path, header: dict[str, object], claims: dict[str, object]) -> str:
    key = serialization.load_pem_private_key((idp / devidp.PRIVATE_KEY).read_bytes(), None)
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key)  # type: ignore[arg-type]
    return f"{signing_input}.{_b64(signature)}"


JSON_SHAPES: list[object] = [
    ["ES256"],
    {"alg": "ES256"},
    7,
    2**63,
    1.5,
    True,
    None,
    [[{"nested": []}]],
]
HEADER_FIELDS = ("alg", "kid", "typ", "cty", "crit")


@pytest.mark.parametrize("field", HEADER_FIELDS)
async def test_jose_headers_of_every_json_type_are_malformed_not_internal(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
    field: str,
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    kid = (idp / "dev-idp-kid").read_text()
    for value in JSON_SHAPES:
        header = {"alg": "ES256", "kid": kid, "typ": "JWT", field: value}
        for call in ("Login", "LinkFederatedIdentity"):
            token = _signed_with_header(idp, clock, header)
            if call == "Login":
                answer = await failure_of(stub.Login(federated(token)))
            else:
                answer = await failure_of(
                    accounts.LinkFederatedIdentity(
                        apb.LinkFederatedIdentityRequest(
                            session_token=session, assertion=token, client=CLIENT
                        )
                    )
                )
            assert (answer.code, answer.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "ASSERTION_MALFORMED",
            ), (call, field, value)


ODD_DATES: list[tuple[str, object]] = [
    (claim, value)
    for claim in ("exp", "iat", "nbf")
    for value in (float("nan"), float("inf"), -float("inf"), 10**30, 2**63, 1e300, -(10**20))
]


@pytest.mark.parametrize(("claim", "value"), ODD_DATES, ids=[f"{c}={v}" for c, v in ODD_DATES])
async def test_signed_assertions_with_odd_dates_are_malformed_not_internal(
    stub: Stub,
    alice: Seeded,
    idp: Path,
    clock: FrozenClock,
    claim: str,
    value: object,
) -> None:
    claims = jwt.decode(mint(idp, clock), options={"verify_signature": False})
    claims[claim] = value
    header: dict[str, object] = {"alg": "ES256", "kid": (idp / "dev-idp-kid").read_text()}
    answer = await failure_of(stub.Login(federated(_signed(idp, header, claims))))
    assert (answer.code, answer.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ASSERTION_MALFORMED")
    assert answer.metadata == {"claim": claim}


@pytest.mark.parametrize("claim", ["sub", "jti", "siret"])
@pytest.mark.parametrize("character", ["\x00", "\x1f", "\x7f"], ids=["nul", "us", "del"])
async def test_signed_assertions_with_control_characters_are_malformed_not_internal(
    stub: Stub, alice: Seeded, idp: Path, clock: FrozenClock, claim: str, character: str
) -> None:
    """A validly signed assertion whose claim holds a NUL reached the database (PostgreSQL
    refuses NUL in text: INTERNAL); control characters are refused like any odd claim."""
    claims = jwt.decode(mint(idp, clock), options={"verify_signature": False})
    claims[claim] = f"{claims[claim]}{character}x"
    header: dict[str, object] = {"alg": "ES256", "kid": (idp / "dev-idp-kid").read_text()}
    answer = await failure_of(stub.Login(federated(_signed(idp, header, claims))))
    assert (answer.code, answer.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ASSERTION_MALFORMED")
    assert answer.metadata == {"claim": claim}

"""Rate limits that a stranger or a member could spend to lock other people out, attacked over
gRPC on SQLite and PostgreSQL (issue 11, items 2, 4, 5 and 6):

- forged assertions and wrong passwords must not spend an organisation's (or the global) login
  budget: those are spent only after the credential is verified;
- codes a member asks for a number not yet verified for their account are charged to that
  member, never to the number's own caps nor to its prefix's pumping breaker;
- per-IP limits hold per IPv4 address, per IPv6 /64 and /48, and `::ffff:a.b.c.d` is a.b.c.d.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select
from support import (
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
    step_up,
)

from authsvc.clock import FrozenClock
from authsvc.config import DEV_ISSUER, Rate, RateLimitBackend, Settings
from authsvc.db import AuditEvent, OutboxMessage
from authsvc.federation import devidp
from authsvc.policies import pumping
from authsvc.server import Server, create_server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import account_service_pb2_grpc, auth_service_pb2_grpc, common_pb2
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.account_service_pb2_grpc import AccountServiceAsyncStub
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

UPDATE_OWN_CONTACT = common_pb2.SENSITIVE_ACTION_UPDATE_OWN_CONTACT


async def outcome(call: Awaitable[object]) -> str:
    """'' when the call went through, else "REASON" or "RATE_LIMITED:<QuotaFailure subject>"."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None, error.details()
        reason, subject = "", ""
        for detail in status.details:
            info, quota = error_details_pb2.ErrorInfo(), error_details_pb2.QuotaFailure()
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(quota):
                subject = quota.violations[0].subject
        return f"{reason}:{subject}" if subject else reason
    return ""


def client(ip: str) -> common_pb2.ClientContext:
    # The end user's address reaches the service in ClientContext, from a trusted backend.
    return common_pb2.ClientContext(ip_address=ip, user_agent="pytest")


def password_login(who: Seeded, *, ip: str, password: str = PASSWORD, **over: str) -> Any:
    return pb.LoginRequest(
        organization_siret=over.get("siret", who.organization_siret),
        login=over.get("login", who.login),
        password=pb.PasswordCredential(password=password),
        client=client(ip),
    )


async def start(settings: Settings, clock: FrozenClock, **changes: Any) -> Server:
    limits = settings.rate_limits.model_copy(update=changes.pop("limits", {}))
    configured = settings.model_copy(update={"rate_limits": limits, **changes})
    server = await create_server(
        Settings.model_validate(configured.model_dump()), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    return server


class Running:
    def __init__(self, server: Server, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.stub: Stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        self.accounts: AccountServiceAsyncStub = account_service_pb2_grpc.AccountServiceStub(
            channel
        )


async def running(server: Server) -> AsyncIterator[Running]:
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            yield Running(server, channel)
    finally:
        await server.stop(grace=0)


# ---- item 2: nobody spends an organisation's login budget before being verified ------------


@pytest.fixture
def idp(tmp_path: Path) -> Path:
    directory = tmp_path / "idp"
    devidp.keygen(directory)
    return directory


@pytest.fixture
async def budgets(settings: Settings, clock: FrozenClock, idp: Path) -> AsyncIterator[Running]:
    """Small organisation and global login budgets, the development issuer trusted."""
    issuers = Settings(
        federation_issuers=[{"issuer": DEV_ISSUER, "jwks_file": str(idp / devidp.JWKS)}]
    ).federation_issuers
    server = await start(
        settings,
        clock,
        federation_issuers=issuers,
        limits={
            "login_organization": Rate(count=5, period_s=60),
            "login_global": Rate(count=8, period_s=60),
            "login_federated_ip": Rate(count=3, period_s=60),
        },
    )
    async for live in running(server):
        yield live


def forged(idp: Path, clock: FrozenClock, subject: str, siret: str) -> str:
    """A well-formed assertion naming the victim organisation, with a garbage signature."""
    real = devidp.mint(idp, subject=subject, siret=siret, now=clock.now().timestamp())
    garbage = base64.urlsafe_b64encode(os.urandom(64)).rstrip(b"=").decode()
    return real.rsplit(".", 1)[0] + "." + garbage


async def test_forged_assertions_from_one_64_do_not_deny_the_organisation(
    budgets: Running, idp: Path, clock: FrozenClock
) -> None:
    alice = await seed_account(budgets.server)
    answers = []
    for index in range(12):  # 12 addresses of one /64, 12 subjects, the victim's SIRET
        request = pb.LoginRequest(
            federated=pb.FederatedCredential(
                assertion=forged(idp, clock, f"forged-{index}", SIRET)
            ),
            client=client(f"2001:db8:7:7::{index + 1:x}"),
        )
        answers.append(await outcome(budgets.stub.Login(request)))
    # Nothing was spent from the organisation's (5) or the global (8) budget: the real users'
    # right passwords go through, even from the forger's /64 (assertions have their own budget).
    for ip in ["2001:db8:7:7::99", *(f"198.51.100.{index}" for index in range(1, 5))]:
        done = await budgets.stub.Login(password_login(alice, ip=ip))
        assert done.WhichOneof("result") == "pending_flow"
    # The /64's own budget for unverified assertions: 3 reach the signature check, then "ip".
    assert answers == ["ASSERTION_SIGNATURE_INVALID"] * 3 + ["RATE_LIMITED:ip"] * 9
    # Forged assertions are audited without the organisation, and only as many as were checked.
    async with budgets.server.app.read() as db:
        rows = list(
            await db.scalars(select(AuditEvent).where(AuditEvent.event_type == "login.federated"))
        )
    assert len(rows) == 3
    assert {row.organization_id for row in rows} == {None}


@pytest.mark.parametrize("siret", [SIRET, OTHER_SIRET], ids=["same-org", "other-org"])
async def test_wrong_passwords_from_many_addresses_do_not_spend_the_shared_budgets(
    budgets: Running, siret: str
) -> None:
    """A stranger guessing (unknown logins, one IPv4 address each) in the victim's organisation
    or in another one: neither the organisation's nor the global budget is spent."""
    alice = await seed_account(budgets.server)
    for index in range(12):
        refused = await failure_of(
            budgets.stub.Login(
                password_login(
                    alice,
                    ip=f"192.0.2.{index + 1}",
                    password="not the password",
                    siret=siret,
                    login=f"guess{index}",
                )
            )
        )
        assert refused.reason == "INVALID_CREDENTIALS"
    done = await budgets.stub.Login(password_login(alice, ip="198.51.100.1"))
    assert done.WhichOneof("result") == "pending_flow"


async def test_the_organisation_budget_still_bounds_verified_logins(budgets: Running) -> None:
    alice = await seed_account(budgets.server)
    for index in range(5):
        await budgets.stub.Login(password_login(alice, ip=f"198.51.100.{index + 1}"))
    refused = await failure_of(budgets.stub.Login(password_login(alice, ip="198.51.100.99")))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "RATE_LIMITED"


# ---- item 6: per-IP limits per network ------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def per_ip(
    request: pytest.FixtureRequest, settings: Settings, clock: FrozenClock, database_url: str
) -> AsyncIterator[Running]:
    """login_ip 3/min, the /48 tier twice that; on both limiter backends."""
    changes: dict[str, Any] = {
        "limits": {"login_ip": Rate(count=3, period_s=60)},
        "ipv6_48_multiplier": 2,
    }
    if request.param == "redis":
        if not database_url.startswith("sqlite"):
            pytest.skip("the limiter's backend does not depend on the database")
        changes.update(
            rate_limit_backend=RateLimitBackend.REDIS,
            redis_url=request.getfixturevalue("redis_url"),
            redis_key_prefix=f"authsvc-test:{os.urandom(8).hex()}:",
        )
    server = await start(settings, clock, **changes)
    async for live in running(server):
        yield live


async def _quota(live: Running, who: Seeded, ip: str) -> str:
    """'' when the login went through, else the refusal."""
    return await outcome(live.stub.Login(password_login(who, ip=ip)))


async def test_addresses_of_one_ipv6_64_share_one_bucket(per_ip: Running) -> None:
    alice = await seed_account(per_ip.server)
    answers = [await _quota(per_ip, alice, f"2001:db8:1:2::{i:x}") for i in range(1, 9)]
    assert answers == ["", "", ""] + ["RATE_LIMITED:ip"] * 5
    assert await _quota(per_ip, alice, "2001:db8:9:2::1") == ""  # another /48, another bucket


async def test_a_48_has_a_wider_tier(per_ip: Running) -> None:
    alice = await seed_account(per_ip.server)
    for network in ("a", "b"):  # two /64s of one /48 use its 6
        for _ in range(3):
            assert await _quota(per_ip, alice, f"2001:db8:1:{network}::1") == ""
    assert (
        await _quota(per_ip, alice, "2001:db8:1:c::1") == "RATE_LIMITED:ip"
    )  # a fresh /64, same /48


async def test_an_ipv4_mapped_address_is_the_ipv4_address(per_ip: Running) -> None:
    alice = await seed_account(per_ip.server)
    for _ in range(3):
        assert await _quota(per_ip, alice, "198.51.100.9") == ""
    assert await _quota(per_ip, alice, "::ffff:198.51.100.9") == "RATE_LIMITED:ip"
    assert await _quota(per_ip, alice, "198.51.100.10") == ""  # one IPv4 address, one bucket


# ---- items 4 and 5: codes to a number typed as a new contact --------------------------------

MALLORY_PHONES = ("+33623000001", "+33634000001")  # each in a prefix of its own


@pytest.fixture
async def members(settings: Settings, clock: FrozenClock) -> AsyncIterator[Running]:
    """The default limits."""
    async for live in running(await start(settings, clock)):
        yield live


@pytest.fixture
async def breaker(settings: Settings, clock: FrozenClock) -> AsyncIterator[Running]:
    """The default limits, but a pumping breaker that trips at 3 sends to one prefix."""
    server = await start(settings, clock, limits={"send_prefix": Rate(count=3, period_s=3600)})
    async for live in running(server):
        yield live


async def contact_flow(live: Running, inbox: Inbox, member: Seeded, phone: str, to: str) -> str:
    """A member signs in, steps up and names `to` as their new phone: the pending flow."""
    session = (await sign_in(live.stub, inbox, member, phone=phone)).session.token
    values = pb.ActionValues(phone=to)
    grant = await step_up(live.stub, inbox, session, UPDATE_OWN_CONTACT, values=values, phone=phone)
    flow = await live.accounts.UpdateContact(
        apb.UpdateContactRequest(
            session_token=session, grant_token=grant.grant_token, phone=to, client=client("::1")
        )
    )
    return flow.pending_flow.flow_id


async def resend_all(live: Running, clock: FrozenClock, flow_id: str) -> list[str]:
    """Presses resend until the flow has no sends left: '' per send, else the refusal."""
    answers = []
    for _ in range(5):
        request = pb.ChallengeRequest(flow_id=flow_id, client=client("::1"))
        answers.append(await outcome(live.stub.Challenge(request)))
        clock.advance(31)
    return answers


async def victim_gets_a_code(live: Running, victim: Seeded) -> None:
    pending = (await live.stub.Login(password_login(victim, ip="203.0.113.50"))).pending_flow
    sent = await live.stub.Challenge(
        pb.ChallengeRequest(flow_id=pending.flow_id, client=client("203.0.113.50"))
    )
    assert sent.sends_remaining == 4


async def test_a_member_cannot_spend_the_caps_of_someone_elses_number(
    members: Running, inbox: Inbox, clock: FrozenClock
) -> None:
    victim = await seed_account(members.server, login="alice", phone=MOBILE)
    mallory = await seed_account(members.server, login="mallory", phone=MALLORY_PHONES[0])
    flows = [await contact_flow(members, inbox, mallory, MALLORY_PHONES[0], MOBILE)]
    answers = await resend_all(members, clock, flows[0])
    # Charged to Mallory, per destination: 3 codes, then Mallory (not the number) is refused.
    assert answers == ["", "", ""] + ["RATE_LIMITED:requester"] * 2
    # The victim's own login codes are untouched: 5 in a row, their number's full burst.
    for _ in range(5):
        await victim_gets_a_code(members, victim)
    async with members.server.app.read() as db:
        to_victim = await db.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.flow_id.in_([uuid.UUID(f) for f in flows]))
        )
    assert to_victim == 3


async def test_members_cannot_trip_the_breaker_of_a_chosen_prefix(
    breaker: Running, inbox: Inbox, clock: FrozenClock
) -> None:
    victim = await seed_account(breaker.server, login="alice", phone="+33670123400")
    sent = 0
    for index, phone in enumerate(MALLORY_PHONES):
        member = await seed_account(breaker.server, login=f"member{index}", phone=phone)
        # Numbers sharing the victim's prefix (+3367012), one per member.
        flow_id = await contact_flow(breaker, inbox, member, phone, f"+3367012340{index + 5}")
        sent += (await resend_all(breaker, clock, flow_id)).count("")
    assert sent == 6  # twice the breaker's 3, none of which counted toward it
    assert await pumping.list_breakers(breaker.server.app) == []
    await victim_gets_a_code(breaker, victim)

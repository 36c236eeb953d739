"""ReadinessService end to end over gRPC, on SQLite and PostgreSQL: a relay's morning.

The relay's administrator adds a member with a step-up, reads the overview (the member without an
administrator who can act comes first; no account of a member is named), starts a campaign with
a step-up; the round emails each not-ready account once with what it lacks; an agent opens the
email's single-use link, gets the code on the phone they typed and becomes ready; the next round
emails the others again and not that agent. Every read is in the relay's audit trail.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import select
from support import CLIENT, MOBILE, Inbox, Seeded, failure_of, seed_account, sign_in, step_up

from authsvc.campaigns import campaign, relays
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.db import Account, AuditEvent, Organization, Role
from authsvc.server import Server
from authsvc.v1 import account_service_pb2, auth_service_pb2, common_pb2
from authsvc.v1 import readiness_service_pb2 as pb
from authsvc.v1.account_service_pb2_grpc import AccountServiceStub
from authsvc.v1.readiness_service_pb2_grpc import ReadinessServiceStub

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub

RELAY = "21180001500011"  # the CDG
MEMBER_A = "21800000000008"  # its administrator never signed in: nobody there can act
MEMBER_B = "21800000100006"
A_ADMIN_PHONE, A_AGENT_PHONE = "+33611111101", "+33611111102"
B_ADMIN_PHONE, B_AGENT_PHONE = "+33611111103", "+33611111104"
NEW_PHONE = "+33611111199"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test runs the rounds itself (campaign.run_due): the server's own loop stays idle."""
    return settings.model_copy(update={"campaign_tick_s": 3600.0})


def sirets(values: list[str]) -> auth_service_pb2.ActionValues:
    return auth_service_pb2.ActionValues(organization_sirets=values)


async def _org_id(server: Server, siret: str) -> Organization:
    async with server.app.read() as db:
        found = await db.scalar(select(Organization).where(Organization.siret == siret))
    assert found is not None
    return found


async def test_a_relays_morning_over_grpc(
    server: Server,
    channel: grpc.aio.Channel,
    stub: AuthServiceAsyncStub,
    inbox: Inbox,
    clock: FrozenClock,
) -> None:
    app = server.app
    readiness = ReadinessServiceStub(channel)
    relay_admin = await seed_account(server, login="cdg", siret=RELAY, role=Role.ADMIN)
    await seed_account(server, login="maire", siret=MEMBER_A, role=Role.ADMIN, phone=A_ADMIN_PHONE)
    await seed_account(server, login="agenta", siret=MEMBER_A, phone=A_AGENT_PHONE)
    b_admin = await seed_account(
        server, login="dgs", siret=MEMBER_B, role=Role.ADMIN, phone=B_ADMIN_PHONE
    )
    b_agent = await seed_account(server, login="agentb", siret=MEMBER_B, phone=B_AGENT_PHONE)
    b_admin_session = (await sign_in(stub, inbox, b_admin, phone=B_ADMIN_PHONE)).session.token
    own = await AccountServiceStub(channel).GetOrganizationReadiness(
        account_service_pb2.GetOrganizationReadinessRequest(
            session_token=b_admin_session, client=CLIENT
        )
    )  # what B's administrator sees of B: the admin signed in (ready), the agent not yet
    assert (own.accounts_total, own.ready, own.ready_administrators) == (2, 1, 1)

    # The operator designates the relay with a first member (authsvc relay add).
    relay = await _org_id(server, RELAY)
    async with app.write() as db:
        await relays.add_members(app, db, relay, [MEMBER_A], actor=None, designate=True)

    session = (await sign_in(stub, inbox, relay_admin)).session.token
    grant = await step_up(
        stub,
        inbox,
        session,
        common_pb2.SENSITIVE_ACTION_ADD_RELAY_MEMBERS,
        values=sirets([MEMBER_B]),
    )
    added = await readiness.AddRelayMembers(
        pb.AddRelayMembersRequest(
            session_token=session,
            grant_token=grant.grant_token,
            organization_sirets=[MEMBER_B],
            client=CLIENT,
        )
    )
    assert [m.siret for m in added.members] == [MEMBER_B]
    reused = await failure_of(
        readiness.AddRelayMembers(
            pb.AddRelayMembersRequest(
                session_token=session,
                grant_token=grant.grant_token,
                organization_sirets=[MEMBER_B],
                client=CLIENT,
            )
        )
    )
    assert reused.reason == "GRANT_ALREADY_USED"
    listed = await readiness.ListRelayMembers(
        pb.ListRelayMembersRequest(session_token=session, client=CLIENT)
    )
    assert [m.siret for m in listed.members] == [MEMBER_A, MEMBER_B]

    overview = await readiness.GetRelayOverview(
        pb.GetRelayOverviewRequest(session_token=session, client=CLIENT)
    )
    assert [m.organization.siret for m in overview.members] == [MEMBER_A, MEMBER_B]
    first, second = overview.members
    assert first.without_ready_administrator and first.readiness.ready_administrators == 0
    assert not second.without_ready_administrator and second.readiness.ready_administrators == 1
    assert (second.readiness.accounts_total, second.readiness.ready) == (2, 1)
    assert [a.display_name for a in first.administrators] == ["Maire"]
    assert first.administrators[0].masked_phone.endswith("01") and "611111101" not in str(first)
    # Counts and administrators only: no login, email or id of a member's account.
    raw = overview.SerializeToString()
    for secret in (b"agenta", b"agentb", b"agentb@example.fr", str(b_agent.account_id).encode()):
        assert secret not in raw

    # A member's own staff are not a relay's.
    refused = await failure_of(
        readiness.GetRelayOverview(
            pb.GetRelayOverviewRequest(session_token=b_admin_session, client=CLIENT)
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_A_RELAY")

    # The campaign, for both members, with a step-up bound to them.
    grant = await step_up(
        stub,
        inbox,
        session,
        common_pb2.SENSITIVE_ACTION_START_READINESS_CAMPAIGN,
        values=sirets([MEMBER_B, MEMBER_A]),
    )
    mismatch = await failure_of(
        readiness.StartReadinessCampaign(
            pb.StartReadinessCampaignRequest(
                session_token=session,
                grant_token=grant.grant_token,
                organization_sirets=[MEMBER_A],
                client=CLIENT,
            )
        )
    )
    assert mismatch.reason == "GRANT_VALUES_MISMATCH"  # and the grant is not spent:
    started = await readiness.StartReadinessCampaign(
        pb.StartReadinessCampaignRequest(
            session_token=session,
            grant_token=grant.grant_token,
            organization_sirets=[MEMBER_A, MEMBER_B],
            client=CLIENT,
        )
    )
    assert started.recipients == 3  # A's administrator and agent, B's agent (B's admin is ready)

    done = await campaign.run_due(app)
    assert done.sent == 3
    email = await inbox.next_to("agentb@example.fr")
    assert "votre numéro de téléphone n'a pas encore été vérifié" in email["text"]
    match = re.search(r"jeton=([A-Za-z0-9_-]{40,})", email["text"])
    assert match, email["text"]
    token = match.group(1)
    assert (await campaign.run_due(app)).sent == 0  # one email per account per round

    # The link opens a contact verification; the code goes to the phone typed; single use.
    opened = await readiness.OpenReadinessLink(
        pb.OpenReadinessLinkRequest(link_token=token, phone=NEW_PHONE, client=CLIENT)
    )
    flow = opened.pending_flow
    assert flow.purpose == common_pb2.FLOW_PURPOSE_CONTACT_VERIFICATION
    assert flow.masked_destination.endswith("99")
    for bad in (token, "x" * 43):
        again = await failure_of(
            readiness.OpenReadinessLink(
                pb.OpenReadinessLinkRequest(link_token=bad, phone=NEW_PHONE, client=CLIENT)
            )
        )
        assert (again.code, again.reason) == (grpc.StatusCode.NOT_FOUND, "LINK_INVALID")
    async with app.read() as db:  # the link alone changed nothing
        agent = await db.scalar(select(Account).where(Account.id == b_agent.account_id))
        assert agent is not None and agent.phone_verified_at is None
        assert agent.phone_masked is not None and agent.phone_masked.endswith("04")
    await stub.Challenge(auth_service_pb2.ChallengeRequest(flow_id=flow.flow_id, client=CLIENT))
    code = await inbox.code_to(NEW_PHONE)
    verified = await stub.Verify(
        auth_service_pb2.VerifyRequest(flow_id=flow.flow_id, code=code, client=CLIENT)
    )
    assert verified.WhichOneof("result") == "contact"

    # A week later: the reminders go to the two accounts still not ready, not to B's agent.
    clock.advance(app.settings.campaign_reminder_interval_s)
    done = await campaign.run_due(app)
    assert (done.sent, done.became_ready) == (2, 1)
    session = (await sign_in(stub, inbox, relay_admin)).session.token  # a new week, a new session
    overview = await readiness.GetRelayOverview(
        pb.GetRelayOverviewRequest(session_token=session, client=CLIENT)
    )
    b_view = next(m for m in overview.members if m.organization.siret == MEMBER_B)
    assert (b_view.campaign.recipients, b_view.campaign.became_ready) == (1, 1)
    assert b_view.campaign.emails_sent == 1 and b_view.campaign.running
    assert [(d.ready, d.phone_unverified) for d in b_view.trend] == [(1, 1), (2, 0)]

    # Every read is in the relay's trail; the member's trail shows the relay that follows it.
    async with app.read() as db:
        relay_events = list(
            await db.scalars(
                select(AuditEvent.event_type).where(AuditEvent.organization_id == relay.id)
            )
        )
        member_b = await _org_id(server, MEMBER_B)
        member_events = list(
            await db.scalars(
                select(AuditEvent.event_type).where(AuditEvent.organization_id == member_b.id)
            )
        )
    assert relay_events.count("relay.overview_read") == 2
    assert relay_events.count("relay.members_read") == 1
    assert relay_events.count("relay.member_added") == 2
    assert "campaign.started" in relay_events
    assert {"relay.member_added", "campaign.started", "campaign.link_opened"} <= set(member_events)
    # And the relay's administrators read their own trail over the API, as before.
    trail = await AccountServiceStub(channel).ListAuditEvents(
        account_service_pb2.ListAuditEventsRequest(session_token=session, client=CLIENT)
    )
    assert "relay.overview_read" in {event.event_type for event in trail.events}


async def test_only_a_relays_administrator_changes_members(
    server: Server, channel: grpc.aio.Channel, stub: AuthServiceAsyncStub, inbox: Inbox
) -> None:
    readiness = ReadinessServiceStub(channel)
    member = await seed_account(server, login="agent", siret=RELAY)
    await seed_account(server, login="x", siret=MEMBER_A)
    session = (await sign_in(stub, inbox, member)).session.token
    refused = await failure_of(
        stub.AuthorizeSensitiveAction(
            auth_service_pb2.AuthorizeSensitiveActionRequest(
                session_token=session,
                action=common_pb2.SENSITIVE_ACTION_ADD_RELAY_MEMBERS,
                new_values=sirets([MEMBER_A]),
                client=CLIENT,
            )
        )
    )
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    no_grant = await failure_of(
        readiness.AddRelayMembers(
            pb.AddRelayMembersRequest(
                session_token=session, organization_sirets=[MEMBER_A], client=CLIENT
            )
        )
    )
    assert no_grant.reason == "GRANT_REQUIRED"


async def test_a_relay_admin_cannot_add_an_unknown_or_invalid_siret(
    server: Server, channel: grpc.aio.Channel, stub: AuthServiceAsyncStub, inbox: Inbox
) -> None:
    app = server.app
    readiness = ReadinessServiceStub(channel)
    admin: Seeded = await seed_account(server, login="cdg", siret=RELAY, role=Role.ADMIN)
    await seed_account(server, login="x", siret=MEMBER_A)
    async with app.write() as db:
        await relays.add_members(
            app, db, await _org_id(server, RELAY), [MEMBER_A], actor=None, designate=True
        )
    session = (await sign_in(stub, inbox, admin, phone=MOBILE)).session.token
    bad = await failure_of(
        stub.AuthorizeSensitiveAction(
            auth_service_pb2.AuthorizeSensitiveActionRequest(
                session_token=session,
                action=common_pb2.SENSITIVE_ACTION_ADD_RELAY_MEMBERS,
                new_values=sirets(["12345678901234"]),
                client=CLIENT,
            )
        )
    )
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    grant = await step_up(
        stub,
        inbox,
        session,
        common_pb2.SENSITIVE_ACTION_ADD_RELAY_MEMBERS,
        values=sirets([MEMBER_B]),
    )
    unknown = await failure_of(
        readiness.AddRelayMembers(
            pb.AddRelayMembersRequest(
                session_token=session,
                grant_token=grant.grant_token,
                organization_sirets=[MEMBER_B],
                client=CLIENT,
            )
        )
    )
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "ORGANIZATION_UNKNOWN")
    # The refusal did not spend the grant: once B exists, the same grant adds it.
    await seed_account(server, login="y", siret=MEMBER_B)
    added = await readiness.AddRelayMembers(
        pb.AddRelayMembersRequest(
            session_token=session,
            grant_token=grant.grant_token,
            organization_sirets=[MEMBER_B],
            client=CLIENT,
        )
    )
    assert [m.siret for m in added.members] == [MEMBER_B]

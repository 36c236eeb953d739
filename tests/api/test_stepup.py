"""Step-up: a fresh code for every sensitive action, and grants bound to exactly what was asked."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from support import (
    CLIENT,
    LANDLINE,
    OTHER_SIRET,
    Inbox,
    Seeded,
    failure_of,
    open_step_up,
    seed_account,
    sign_in,
    step_up,
)

from authsvc.clock import FrozenClock
from authsvc.db import Role
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

A = common_pb2
NEW_PHONE = "+33698765432"


@pytest.fixture
async def admin(server: Server) -> Seeded:
    return await seed_account(server, login="admin", role=Role.ADMIN)


@pytest.fixture
async def member(server: Server) -> Seeded:
    return await seed_account(server, login="member", phone=LANDLINE)


def redeem(
    stub: Stub,
    session: str,
    grant: str,
    action: common_pb2.SensitiveAction.ValueType,
    *,
    target: str = "",
    values: pb.ActionValues | None = None,
) -> grpc.aio.UnaryUnaryCall[pb.RedeemActionGrantRequest, pb.RedeemActionGrantResponse]:
    return stub.RedeemActionGrant(
        pb.RedeemActionGrantRequest(
            session_token=session,
            grant_token=grant,
            action=action,
            target_account_id=target,
            new_values=values or pb.ActionValues(),
            client=CLIENT,
        )
    )


async def test_a_fresh_code_is_needed_even_right_after_a_login_code(
    stub: Stub, inbox: Inbox, admin: Seeded
) -> None:
    session = (await sign_in(stub, inbox, admin)).session.token
    flow = (await open_step_up(stub, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)).pending_flow
    assert flow.purpose == A.FLOW_PURPOSE_STEP_UP
    # Nothing is granted without Challenge + Verify: the flow has no code yet.
    refused = await failure_of(stub.Verify(pb.VerifyRequest(flow_id=flow.flow_id, code="123456")))
    assert refused.reason == "NO_ACTIVE_CHALLENGE"
    grant = await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    assert grant.action == A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD
    assert grant.target_account_id == str(admin.account_id)
    assert len(grant.grant_token) == 43


async def test_who_may_ask_for_what(
    stub: Stub, inbox: Inbox, server: Server, admin: Seeded, member: Seeded
) -> None:
    member_session = (await sign_in(stub, inbox, member, phone=LANDLINE)).session.token
    admin_session = (await sign_in(stub, inbox, admin)).session.token
    outsider = await seed_account(server, login="outsider", siret=OTHER_SIRET)
    create = pb.ActionValues(
        login="newbie", display_name="New", email="n@example.fr", phone=NEW_PHONE
    )
    cases = [
        (member_session, A.SENSITIVE_ACTION_CREATE_ACCOUNT, "", create),
        (
            member_session,
            A.SENSITIVE_ACTION_GRANT_SERVICE_ACCESS,
            str(admin.account_id),
            pb.ActionValues(service_codes=["DOSSIERS"]),
        ),
        (
            member_session,
            A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT,
            str(admin.account_id),
            pb.ActionValues(phone=NEW_PHONE),
        ),
        (
            admin_session,
            A.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT,
            str(outsider.account_id),
            pb.ActionValues(phone=NEW_PHONE),
        ),
        (
            admin_session,
            A.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT,
            "00000000-0000-4000-8000-000000000000",
            pb.ActionValues(phone=NEW_PHONE),
        ),
        (
            admin_session,
            A.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT,
            str(admin.account_id),
            pb.ActionValues(phone=NEW_PHONE),
        ),
    ]
    for session, action, target, values in cases:
        denied = await failure_of(open_step_up(stub, session, action, target=target, values=values))
        assert (denied.code, denied.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        ), (action, target)
    # Allowed: the admin on a member of the organisation, the member on themself.
    await open_step_up(
        stub,
        admin_session,
        A.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT,
        target=str(member.account_id),
        values=pb.ActionValues(phone=NEW_PHONE),
    )
    await open_step_up(
        stub,
        member_session,
        A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT,
        values=pb.ActionValues(email="new@example.fr"),
    )


@pytest.mark.parametrize(
    ("action", "values", "field"),
    [
        (A.SENSITIVE_ACTION_UNSPECIFIED, pb.ActionValues(), "action"),
        (99, pb.ActionValues(), "action"),
        (A.SENSITIVE_ACTION_CREATE_ACCOUNT, pb.ActionValues(login="x"), "new_values.email"),
        (A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT, pb.ActionValues(), "new_values"),
        (
            A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT,
            pb.ActionValues(email="a@b.fr", phone=NEW_PHONE),
            "new_values",
        ),
        (
            A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT,
            pb.ActionValues(phone="+33899234567"),
            "new_values.phone",
        ),
        (A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT, pb.ActionValues(email="nope"), "new_values.email"),
        (
            A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
            pb.ActionValues(email="a@b.fr"),
            "new_values.email",
        ),
        (A.SENSITIVE_ACTION_GRANT_SERVICE_ACCESS, pb.ActionValues(), "new_values.service_codes"),
    ],
)
async def test_bad_step_up_requests(
    stub: Stub, inbox: Inbox, admin: Seeded, action: int, values: pb.ActionValues, field: str
) -> None:
    session = (await sign_in(stub, inbox, admin)).session.token
    refused = await failure_of(open_step_up(stub, session, action, values=values))  # type: ignore[arg-type]  # out-of-range on purpose
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert refused.metadata["field"] == field


async def test_unknown_service_is_refused(
    stub: Stub, inbox: Inbox, admin: Seeded, member: Seeded
) -> None:
    session = (await sign_in(stub, inbox, admin)).session.token
    refused = await failure_of(
        open_step_up(
            stub,
            session,
            A.SENSITIVE_ACTION_GRANT_SERVICE_ACCESS,
            target=str(member.account_id),
            values=pb.ActionValues(service_codes=["NOPE"]),
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SERVICE_UNKNOWN")


async def test_grant_is_bound_to_session_action_target_values_and_single_use(
    stub: Stub, inbox: Inbox, admin: Seeded, member: Seeded, server: Server, clock: FrozenClock
) -> None:
    login = await sign_in(stub, inbox, admin)
    session = login.session.token
    other_session = (
        await stub.Login(
            pb.LoginRequest(
                organization_siret=admin.organization_siret,
                login=admin.login,
                password=pb.PasswordCredential(password="correct horse battery staple"),
                device_token=login.device_token,
                client=CLIENT,
            )
        )
    ).session.token
    target = str(member.account_id)
    values = pb.ActionValues(phone=NEW_PHONE)
    action = A.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT
    grant = (await step_up(stub, inbox, session, action, target=target, values=values)).grant_token
    other = await seed_account(server, login="other")

    mismatches = {
        "GRANT_VALUES_MISMATCH": redeem(
            stub,
            session,
            grant,
            action,
            target=target,
            values=pb.ActionValues(phone="+33698765433"),
        ),
        "GRANT_TARGET_MISMATCH": redeem(
            stub, session, grant, action, target=str(other.account_id), values=values
        ),
        "GRANT_ACTION_MISMATCH": redeem(
            stub,
            session,
            grant,
            A.SENSITIVE_ACTION_GRANT_SERVICE_ACCESS,
            target=target,
            values=pb.ActionValues(service_codes=["DOSSIERS"]),
        ),
        "GRANT_SESSION_MISMATCH": redeem(
            stub, other_session, grant, action, target=target, values=values
        ),
        "GRANT_NOT_FOUND": redeem(stub, session, "B" * 43, action, target=target, values=values),
    }
    for reason, call in mismatches.items():
        assert (await failure_of(call)).reason == reason
    # None of the refusals spent it; the exact request does, once.
    redeemed = await redeem(stub, session, grant, action, target=target, values=values)
    assert redeemed.account_id == str(admin.account_id)
    again = await failure_of(redeem(stub, session, grant, action, target=target, values=values))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "GRANT_ALREADY_USED")

    late = (await step_up(stub, inbox, session, action, target=target, values=values)).grant_token
    clock.advance(300)
    expired = await failure_of(redeem(stub, session, late, action, target=target, values=values))
    assert expired.reason == "GRANT_EXPIRED"


async def test_concurrent_redemptions_exactly_one_wins(
    stub: Stub, inbox: Inbox, admin: Seeded
) -> None:
    session = (await sign_in(stub, inbox, admin)).session.token
    action = A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD
    grant = (await step_up(stub, inbox, session, action)).grant_token
    results = await asyncio.gather(
        *(redeem(stub, session, grant, action) for _ in range(30)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, pb.RedeemActionGrantResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 29
    assert {loser.code() for loser in losers} == {grpc.StatusCode.FAILED_PRECONDITION}

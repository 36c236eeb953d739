"""Account administration end to end: every change of email, phone, password or access needs a
fresh code, and does exactly what the grant allowed."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import func, select, text
from support import (
    CLIENT,
    LANDLINE,
    MOBILE,
    PASSWORD,
    Inbox,
    Seeded,
    failure_of,
    seed_account,
    sign_in,
    step_up,
)

from authsvc.db import Account, AuditEvent, Role
from authsvc.server import Server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import account_service_pb2_grpc
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2 as A

if TYPE_CHECKING:
    from authsvc.v1.account_service_pb2_grpc import AccountServiceAsyncStub
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

NEW_MOBILE = "+33698765432"
STRONG = "Tournesol-Bleu-Vendredi-42"


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> AccountServiceAsyncStub:
    return account_service_pb2_grpc.AccountServiceStub(channel)


@pytest.fixture
async def admin(server: Server) -> Seeded:
    return await seed_account(server, login="admin", role=Role.ADMIN)


@pytest.fixture
async def member(server: Server) -> Seeded:
    return await seed_account(server, login="member", phone=LANDLINE)


async def admin_session(stub: Stub, inbox: Inbox, admin: Seeded) -> str:
    return (await sign_in(stub, inbox, admin)).session.token


async def test_create_account_activate_and_first_login_needs_a_code(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, admin: Seeded
) -> None:
    session = await admin_session(stub, inbox, admin)
    values = pb.ActionValues(
        login="nadia",
        display_name="Nadia B.",
        email="nadia@mairie.example",
        phone=NEW_MOBILE,
        role=A.ROLE_MEMBER,
    )
    grant = await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CREATE_ACCOUNT, values=values)
    request = apb.CreateAccountRequest(
        session_token=session,
        grant_token=grant.grant_token,
        login="nadia",
        display_name="Nadia B.",
        email="nadia@mairie.example",
        phone=NEW_MOBILE,
        role=A.ROLE_MEMBER,
        client=CLIENT,
    )
    # Other values than the ones authorised: refused, and the grant is not spent.
    other = apb.CreateAccountRequest()
    other.CopyFrom(request)
    other.email = "someone-else@mairie.example"
    assert (await failure_of(accounts.CreateAccount(other))).reason == "GRANT_VALUES_MISMATCH"
    created = (await accounts.CreateAccount(request)).account
    assert created.status == apb.ACCOUNT_STATUS_PENDING_ACTIVATION
    assert created.masked_phone.endswith("32") and "98765" not in created.masked_phone
    assert (await failure_of(accounts.CreateAccount(request))).reason == "GRANT_ALREADY_USED"

    activation = await inbox.next_to("nadia@mairie.example")
    token = re.search(r"[A-Za-z0-9_-]{43}", activation["text"])
    assert token, activation["text"]
    weak = await failure_of(
        accounts.ActivateAccount(
            apb.ActivateAccountRequest(
                activation_token=token.group(0), password="password1234", client=CLIENT
            )
        )
    )
    assert (weak.code, weak.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "WEAK_PASSWORD")
    with_login = await failure_of(
        accounts.ActivateAccount(
            apb.ActivateAccountRequest(
                activation_token=token.group(0), password="nadia-Tournesol-Bleu-42", client=CLIENT
            )
        )
    )
    assert with_login.reason == "WEAK_PASSWORD"
    await accounts.ActivateAccount(
        apb.ActivateAccountRequest(activation_token=token.group(0), password=STRONG, client=CLIENT)
    )
    reused = await failure_of(
        accounts.ActivateAccount(
            apb.ActivateAccountRequest(
                activation_token=token.group(0), password=STRONG, client=CLIENT
            )
        )
    )
    assert reused.reason == "ACTIVATION_TOKEN_INVALID"

    nadia = Seeded(admin.organization_siret, "nadia", admin.account_id)
    first = await sign_in(stub, inbox, nadia, phone=NEW_MOBILE, password=STRONG)
    assert first.session.token  # through a code: first login


async def test_no_change_without_a_grant(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    admin: Seeded,
    member: Seeded,
    server: Server,
) -> None:
    session = await admin_session(stub, inbox, admin)
    target = str(member.account_id)
    calls = [
        accounts.CreateAccount(
            apb.CreateAccountRequest(
                session_token=session,
                login="x",
                display_name="X",
                email="x@example.fr",
                phone=NEW_MOBILE,
            )
        ),
        accounts.UpdateContact(
            apb.UpdateContactRequest(
                session_token=session, target_account_id=target, phone=NEW_MOBILE
            )
        ),
        accounts.UpdateContact(apb.UpdateContactRequest(session_token=session, email="a@b.fr")),
        accounts.ChangePassword(
            apb.ChangePasswordRequest(
                session_token=session, current_password=PASSWORD, new_password=STRONG
            )
        ),
        accounts.GrantServiceAccess(
            apb.GrantServiceAccessRequest(
                session_token=session, target_account_id=target, service_codes=["DOSSIERS"]
            )
        ),
    ]
    for call in calls:
        refused = await failure_of(call)  # type: ignore[arg-type]
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "GRANT_REQUIRED",
        )
    async with server.app.read() as db:
        assert await db.scalar(select(func.count()).select_from(Account)) == 2
        phone = await db.scalar(select(Account.phone_masked).where(Account.id == member.account_id))
    assert phone is not None and phone.endswith(LANDLINE[-2:])


async def test_own_phone_change_is_verified_on_the_new_phone_and_revokes_devices(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, alice: Seeded
) -> None:
    login = await sign_in(stub, inbox, alice)
    session, device = login.session.token, login.device_token
    values = pb.ActionValues(phone=NEW_MOBILE)
    grant = await step_up(
        stub, inbox, session, A.SENSITIVE_ACTION_UPDATE_OWN_CONTACT, values=values
    )
    flow = (
        await accounts.UpdateContact(
            apb.UpdateContactRequest(
                session_token=session,
                grant_token=grant.grant_token,
                phone=NEW_MOBILE,
                client=CLIENT,
            )
        )
    ).pending_flow
    assert flow.purpose == A.FLOW_PURPOSE_CONTACT_VERIFICATION
    assert flow.masked_destination.endswith("32")
    await stub.Challenge(pb.ChallengeRequest(flow_id=flow.flow_id, client=CLIENT))
    code = await inbox.code_to(NEW_MOBILE)  # the code goes to the NEW phone
    done = await stub.Verify(pb.VerifyRequest(flow_id=flow.flow_id, code=code, client=CLIENT))
    assert done.WhichOneof("result") == "contact"
    assert done.contact.masked_phone.endswith("32")
    notice = await inbox.next_to("alice@example.fr")  # the old contact is told
    assert "téléphone" in notice["text"]
    # The 7-day trust was earned with the old phone: a code again, on the new phone.
    again = await stub.Login(
        pb.LoginRequest(
            organization_siret=alice.organization_siret,
            login=alice.login,
            password=pb.PasswordCredential(password=PASSWORD),
            device_token=device,
            client=CLIENT,
        )
    )
    assert again.pending_flow.masked_destination.endswith("32")
    assert MOBILE not in str(done)


async def test_admin_changes_a_members_email_through_the_new_address(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, admin: Seeded, member: Seeded
) -> None:
    session = await admin_session(stub, inbox, admin)
    target = str(member.account_id)
    grant = await step_up(
        stub,
        inbox,
        session,
        A.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT,
        target=target,
        values=pb.ActionValues(email="member.new@example.fr"),
    )
    flow = (
        await accounts.UpdateContact(
            apb.UpdateContactRequest(
                session_token=session,
                grant_token=grant.grant_token,
                target_account_id=target,
                email="member.new@example.fr",
                client=CLIENT,
            )
        )
    ).pending_flow
    assert list(flow.channels) == [A.CHANNEL_EMAIL]
    await stub.Challenge(pb.ChallengeRequest(flow_id=flow.flow_id, client=CLIENT))
    code = await inbox.code_to("member.new@example.fr")
    done = await stub.Verify(pb.VerifyRequest(flow_id=flow.flow_id, code=code, client=CLIENT))
    assert done.contact.account_id == target and done.contact.masked_email.startswith("m•••@")
    await inbox.next_to("member@example.fr")  # notice to the old address


async def test_change_password_revokes_other_sessions_and_devices(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, alice: Seeded
) -> None:
    first = await sign_in(stub, inbox, alice)
    second = await sign_in(stub, inbox, alice)
    session = second.session.token
    grant = await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    wrong = await failure_of(
        accounts.ChangePassword(
            apb.ChangePasswordRequest(
                session_token=session,
                grant_token=grant.grant_token,
                current_password="not it at all",
                new_password=STRONG,
                client=CLIENT,
            )
        )
    )
    assert wrong.reason == "INVALID_CREDENTIALS"
    weak = await failure_of(
        accounts.ChangePassword(
            apb.ChangePasswordRequest(
                session_token=session,
                grant_token=grant.grant_token,
                current_password=PASSWORD,
                new_password="azertyuiop123",
                client=CLIENT,
            )
        )
    )
    assert weak.reason == "WEAK_PASSWORD" and weak.metadata["field"] == "new_password"
    changed = await accounts.ChangePassword(
        apb.ChangePasswordRequest(
            session_token=session,
            grant_token=grant.grant_token,
            current_password=PASSWORD,
            new_password=STRONG,
            client=CLIENT,
        )
    )
    assert (changed.revoked_sessions, changed.revoked_devices) == (1, 2)
    gone = await failure_of(
        stub.ValidateSession(pb.ValidateSessionRequest(session_token=first.session.token))
    )
    assert gone.reason == "SESSION_INVALID"
    await stub.ValidateSession(pb.ValidateSessionRequest(session_token=session))
    old = await failure_of(
        stub.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=alice.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            )
        )
    )
    assert old.reason == "INVALID_CREDENTIALS"
    fresh = await stub.Login(
        pb.LoginRequest(
            organization_siret=alice.organization_siret,
            login=alice.login,
            password=pb.PasswordCredential(password=STRONG),
            device_token=second.device_token,
            client=CLIENT,
        )
    )
    assert fresh.HasField("pending_flow")  # devices revoked: a code again


async def test_wrong_current_passwords_lock_like_logins(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, alice: Seeded
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)

    def change(current: str) -> object:
        return accounts.ChangePassword(
            apb.ChangePasswordRequest(
                session_token=session,
                grant_token=grant.grant_token,
                current_password=current,
                new_password=STRONG,
                client=CLIENT,
            )
        )

    reasons = [(await failure_of(change(f"guess number {n}"))).reason for n in range(5)]  # type: ignore[arg-type]
    assert reasons == ["INVALID_CREDENTIALS"] * 4 + ["ACCOUNT_LOCKED"]
    locked = await failure_of(change(PASSWORD))  # type: ignore[arg-type]
    assert locked.reason == "ACCOUNT_LOCKED" and locked.retry_after
    relogin = await failure_of(
        stub.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=alice.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            )
        )
    )
    assert relogin.reason == "ACCOUNT_LOCKED"  # the same lock as Login's


async def test_service_access(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, admin: Seeded, member: Seeded
) -> None:
    session = await admin_session(stub, inbox, admin)
    catalogue = await accounts.ListServices(apb.ListServicesRequest(session_token=session))
    assert {s.code for s in catalogue.services} >= {"DOSSIERS", "DECLARATIONS"}
    target = str(member.account_id)
    codes = ["DOSSIERS", "DECLARATIONS"]
    grant = await step_up(
        stub,
        inbox,
        session,
        A.SENSITIVE_ACTION_GRANT_SERVICE_ACCESS,
        target=target,
        values=pb.ActionValues(service_codes=codes),
    )
    granted = await accounts.GrantServiceAccess(
        apb.GrantServiceAccessRequest(
            session_token=session,
            grant_token=grant.grant_token,
            target_account_id=target,
            service_codes=list(reversed(codes)),
            client=CLIENT,
        )
    )  # order does not matter
    assert list(granted.service_codes) == ["DECLARATIONS", "DOSSIERS"]
    revoked = await accounts.RevokeServiceAccess(
        apb.RevokeServiceAccessRequest(
            session_token=session, target_account_id=target, service_codes=["DOSSIERS"]
        )
    )
    assert list(revoked.service_codes) == ["DECLARATIONS"]
    unknown = await failure_of(
        accounts.RevokeServiceAccess(
            apb.RevokeServiceAccessRequest(
                session_token=session, target_account_id=target, service_codes=["NOPE"]
            )
        )
    )
    assert unknown.reason == "SERVICE_UNKNOWN"


async def test_members_find_their_administrators_masked(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, admin: Seeded, member: Seeded
) -> None:
    session = (await sign_in(stub, inbox, member, phone=LANDLINE)).session.token
    found = await accounts.ListOrganizationAdministrators(
        apb.ListOrganizationAdministratorsRequest(session_token=session)
    )
    assert [a.display_name for a in found.administrators] == ["Admin"]
    contact = found.administrators[0]
    assert contact.masked_email == "a•••@example.fr"
    assert contact.masked_phone.endswith("78") and MOBILE[3:9] not in contact.masked_phone
    denied = await failure_of(
        accounts.GetOrganizationReadiness(
            apb.GetOrganizationReadinessRequest(session_token=session)
        )
    )
    assert denied.reason == "PERMISSION_DENIED"


async def test_readiness_report(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    admin: Seeded,
    member: Seeded,
    server: Server,
) -> None:
    session = await admin_session(stub, inbox, admin)  # the admin's phone is now verified
    async with server.app.write() as db:
        from authsvc.accounts import create_account

        org_id = await db.scalar(
            select(Account.organization_id).where(Account.id == admin.account_id)
        )
        assert org_id is not None
        await create_account(
            server.app,
            db,
            organization_id=org_id,
            login="imported",
            display_name="Imported",
            email="i@example.fr",
            phone="12",
            role=Role.MEMBER,
            password_hash=None,
            importing=True,
        )
    report = await accounts.GetOrganizationReadiness(
        apb.GetOrganizationReadinessRequest(session_token=session)
    )
    assert (report.accounts_total, report.with_verified_phone) == (3, 1)
    assert (report.mobile, report.landline, report.without_phone) == (1, 1, 1)
    assert (report.pending_activation, report.administrators, report.reachable_administrators) == (
        1,
        1,
        1,
    )
    issues = {(a.login, a.issue) for a in report.accounts}
    assert issues == {
        ("member", apb.READINESS_ISSUE_PHONE_UNVERIFIED),
        ("imported", apb.READINESS_ISSUE_INVALID_PHONE),
        ("imported", apb.READINESS_ISSUE_PENDING_ACTIVATION),
    }


async def test_audit_trail_records_each_step_and_is_append_only(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    admin: Seeded,
    member: Seeded,
    server: Server,
) -> None:
    session = await admin_session(stub, inbox, admin)
    grant = await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    await accounts.ChangePassword(
        apb.ChangePasswordRequest(
            session_token=session,
            grant_token=grant.grant_token,
            current_password=PASSWORD,
            new_password=STRONG,
            client=CLIENT,
        )
    )
    seen: list[apb.AuditEvent] = []
    token = ""
    while True:
        page = await accounts.ListAuditEvents(
            apb.ListAuditEventsRequest(session_token=session, page_size=3, page_token=token)
        )
        seen += page.events
        token = page.next_page_token
        if not token:
            break
    types = [e.event_type for e in reversed(seen)]
    assert types == [
        "login.password",
        "code.sent",
        "code.verified",
        "stepup.opened",
        "code.sent",
        "code.verified",
        "grant.issued",
        "grant.redeemed",
        "password.changed",
    ]
    assert all(e.ip_address == CLIENT.ip_address and e.request_id for e in seen)
    assert [e.sequence for e in seen] == sorted((e.sequence for e in seen), reverse=True)
    member_session = (await sign_in(stub, inbox, member, phone=LANDLINE)).session.token
    denied = await failure_of(
        accounts.ListAuditEvents(apb.ListAuditEventsRequest(session_token=member_session))
    )
    assert denied.reason == "PERMISSION_DENIED"
    for statement in ("UPDATE audit_events SET outcome = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"):
            async with server.app.write() as db:
                await db.execute(text(statement))
    async with server.app.read() as db:
        stored = await db.scalar(select(func.count()).select_from(AuditEvent))
    assert stored is not None and stored >= len(seen)

"""Readiness reports show the other second factors (authenticator apps, passkeys) as information,
over real gRPC on SQLite and PostgreSQL (issue 16): the factors are enrolled and registered
through FactorService and PasskeyService (codes by pyotp, a software authenticator), and
`ready` stays what the rules say, whatever factor an account has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import pyotp
import pytest
from passkey_authenticator import SoftAuthenticator
from sqlalchemy import select, update
from support import CLIENT, MOBILE, OTHER_SIRET, SIRET, Inbox, Seeded, seed_account, sign_in
from support import step_up as grant_for

from authsvc.campaigns import relays
from authsvc.clock import FrozenClock
from authsvc.config import Rate, RateLimits, Settings
from authsvc.db import Account, Organization, Role
from authsvc.server import Server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import common_pb2, factor_service_pb2_grpc, passkey_service_pb2_grpc
from authsvc.v1 import factor_service_pb2 as fpb
from authsvc.v1 import passkey_service_pb2 as ppb
from authsvc.v1 import readiness_service_pb2 as rpb
from authsvc.v1.account_service_pb2_grpc import AccountServiceStub
from authsvc.v1.readiness_service_pb2_grpc import ReadinessServiceStub

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

ENROLL = common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR
TOTP, PASSKEY = fpb.FACTOR_KIND_TOTP, fpb.FACTOR_KIND_PASSKEY
UNVERIFIED = apb.READINESS_ISSUE_PHONE_UNVERIFIED
PHONES = {
    "app": "+33611111201",
    "pending": "+33611111202",
    "lapsed": "+33611111203",
    "keyholder": "+33611111204",
    "stranger": "+33611111205",
}


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


@dataclass(frozen=True)
class Enrolled:
    """A signed-in account, with its phone."""

    who: Seeded
    phone: str
    session: str


class Factors:
    """The real enrolment paths of the two other factors, for one test's accounts."""

    def __init__(
        self, stub: Stub, channel: grpc.aio.Channel, inbox: Inbox, clock: FrozenClock
    ) -> None:
        self.stub, self.inbox, self.clock = stub, inbox, clock
        self.totp = factor_service_pb2_grpc.FactorServiceStub(channel)
        self.passkeys = passkey_service_pb2_grpc.PasskeyServiceStub(channel)

    async def signed_in(
        self, server: Server, login: str, *, siret: str = SIRET, role: Role = Role.MEMBER
    ) -> Enrolled:
        phone = PHONES.get(login, MOBILE)
        who = await seed_account(server, login=login, siret=siret, role=role, phone=phone)
        session = (await sign_in(self.stub, self.inbox, who, phone=phone)).session.token
        return Enrolled(who, phone, session)

    async def begin_app(self, account: Enrolled) -> fpb.BeginTotpEnrollmentResponse:
        grant = await grant_for(self.stub, self.inbox, account.session, ENROLL, phone=account.phone)
        return await self.totp.BeginTotpEnrollment(
            fpb.BeginTotpEnrollmentRequest(
                session_token=account.session, grant_token=grant.grant_token, name="Work phone"
            )
        )

    async def app(self, account: Enrolled) -> None:
        begun = await self.begin_app(account)
        parsed = pyotp.parse_uri(begun.otpauth_uri)
        assert isinstance(parsed, pyotp.TOTP)
        await self.totp.ConfirmTotpEnrollment(
            fpb.ConfirmTotpEnrollmentRequest(
                session_token=account.session,
                factor_id=begun.factor_id,
                code=str(parsed.at(self.clock.now().timestamp())),
                client=CLIENT,
            )
        )
        self.clock.advance(30)

    async def passkey(self, account: Enrolled) -> None:
        grant = await grant_for(self.stub, self.inbox, account.session, ENROLL, phone=account.phone)
        begun = await self.passkeys.BeginPasskeyRegistration(
            ppb.BeginPasskeyRegistrationRequest(
                session_token=account.session, grant_token=grant.grant_token
            )
        )
        await self.passkeys.FinishPasskeyRegistration(
            ppb.FinishPasskeyRegistrationRequest(
                session_token=account.session,
                ceremony_id=begun.ceremony_id,
                credential_json=SoftAuthenticator().create(begun.creation_options_json),
                name="Laptop",
            )
        )


async def phone_no_longer_verified(server: Server, account: Enrolled) -> None:
    """No API path clears a verified phone, so the state is written directly: an account whose
    phone never passed a code, yet that holds an app (it must stay not ready)."""
    async with server.app.write() as db:
        await db.execute(
            update(Account)
            .where(Account.id == account.who.account_id)
            .values(phone_verified_at=None)
        )


@dataclass(frozen=True)
class Organisation:
    admin: Enrolled
    stranger: Enrolled


@pytest.fixture
async def organisation(
    server: Server, stub: Stub, channel: grpc.aio.Channel, inbox: Inbox, clock: FrozenClock
) -> Organisation:
    """SIRET's five accounts, and another organisation's administrator with both factors."""
    enrol = Factors(stub, channel, inbox, clock)
    admin = await enrol.signed_in(server, "admin", role=Role.ADMIN)  # ready, SMS only
    await enrol.app(await enrol.signed_in(server, "app"))  # ready, with an app
    pending = await enrol.signed_in(server, "pending")
    await enrol.begin_app(pending)  # an enrolment never confirmed is no app
    await phone_no_longer_verified(server, pending)
    lapsed = await enrol.signed_in(server, "lapsed")
    await enrol.app(lapsed)
    await phone_no_longer_verified(server, lapsed)  # not ready, app or not
    await enrol.passkey(await enrol.signed_in(server, "keyholder"))  # ready, with a passkey
    stranger = await enrol.signed_in(server, "stranger", siret=OTHER_SIRET, role=Role.ADMIN)
    await enrol.passkey(stranger)
    await enrol.app(stranger)
    return Organisation(admin, stranger)


async def readiness_of(
    channel: grpc.aio.Channel, session: str
) -> apb.GetOrganizationReadinessResponse:
    return await AccountServiceStub(channel).GetOrganizationReadiness(
        apb.GetOrganizationReadinessRequest(session_token=session, client=CLIENT)
    )


async def test_other_factors_are_counted_as_information_and_never_make_an_account_ready(
    channel: grpc.aio.Channel, organisation: Organisation
) -> None:
    report = await readiness_of(channel, organisation.admin.session)
    # Ready by the rules alone: the SMS-only admin, the app holder, the passkey holder; the
    # account with an app but no verified phone is not.
    assert (report.accounts_total, report.ready, report.with_verified_phone) == (5, 3, 3)
    # The confirmed apps (app, lapsed), not the pending enrolment; the one passkey.
    assert (report.with_authenticator_app, report.with_passkey) == (2, 1)
    listed = {(a.login, a.issue, tuple(a.other_factors)) for a in report.accounts}
    assert listed == {("pending", UNVERIFIED, ()), ("lapsed", UNVERIFIED, (TOTP,))}


async def test_another_organisations_factors_are_not_counted(
    server: Server, stub: Stub, channel: grpc.aio.Channel, inbox: Inbox, organisation: Organisation
) -> None:
    own = await readiness_of(channel, organisation.stranger.session)
    assert (own.accounts_total, own.ready, own.with_authenticator_app, own.with_passkey) == (
        1,
        1,
        1,
        1,
    )
    assert list(own.accounts) == []

    # The other organisation is SIRET's relay: its overview counts SIRET's factors, not its own.
    app = server.app
    async with app.read() as db:
        relay = await db.scalar(select(Organization).where(Organization.siret == OTHER_SIRET))
    assert relay is not None
    async with app.write() as db:
        await relays.add_members(app, db, relay, [SIRET], actor=None, designate=True)
    overview = await ReadinessServiceStub(channel).GetRelayOverview(
        rpb.GetRelayOverviewRequest(session_token=organisation.stranger.session, client=CLIENT)
    )
    [member] = overview.members
    counts = member.readiness
    assert member.organization.siret == SIRET
    assert (counts.accounts_total, counts.ready, counts.ready_administrators) == (5, 3, 1)
    assert (counts.with_authenticator_app, counts.with_passkey) == (2, 1)

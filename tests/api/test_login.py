"""The two-factor login, end to end over real gRPC, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from support import CLIENT, LANDLINE, MOBILE, PASSWORD, Inbox, Seeded, failure_of, seed_account

from authsvc.clock import FrozenClock
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub


def login_request(
    who: Seeded, *, password: str = PASSWORD, device_token: str = ""
) -> pb.LoginRequest:
    return pb.LoginRequest(
        organization_siret=who.organization_siret,
        login=who.login,
        password=pb.PasswordCredential(password=password),
        device_token=device_token,
        client=CLIENT,
    )


async def full_login(
    stub: Stub, inbox: Inbox, who: Seeded, sent_before: int = 0
) -> pb.VerifyResponse:
    pending = (await stub.Login(login_request(who))).pending_flow
    await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    code = await inbox.latest_code(sent_before + 1)
    return await stub.Verify(pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT))


async def test_first_login_always_needs_a_code(stub: Stub, alice: Seeded) -> None:
    response = await stub.Login(login_request(alice))
    assert response.WhichOneof("result") == "pending_flow"
    flow = response.pending_flow
    assert flow.purpose == common_pb2.FLOW_PURPOSE_LOGIN
    assert list(flow.channels) == [common_pb2.CHANNEL_SMS, common_pb2.CHANNEL_VOICE]
    assert flow.default_channel == common_pb2.CHANNEL_SMS
    assert flow.masked_destination.startswith("+33 ")
    assert flow.masked_destination.endswith("78")
    assert MOBILE[3:] not in flow.masked_destination.replace(" ", "")


async def test_code_by_sms_gives_session_and_device_token(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    pending = (await stub.Login(login_request(alice))).pending_flow
    sent = await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    assert sent.channel == common_pb2.CHANNEL_SMS
    assert sent.sends_remaining == 4
    assert sent.code_expire_time.ToDatetime().timestamp() == pytest.approx(
        clock.now().timestamp() + 300
    )
    message = (await inbox.wait_for(1))[0]
    assert message["channel"] == "sms" and message["to"] == MOBILE
    assert "PEP's" in message["text"] and "Ne le communiquez jamais" in message["text"]
    code = await inbox.latest_code(1)
    assert message["text"].endswith(f"#{code}")  # WebOTP line

    verified = await stub.Verify(
        pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
    )
    assert verified.WhichOneof("result") == "login"
    session = verified.login.session
    assert len(session.token) == 43 and len(verified.login.device_token) == 43
    assert session.assurance_level == common_pb2.ASSURANCE_LEVEL_AAL2
    trust_end = verified.login.device_trust_expire_time.ToDatetime().timestamp()
    assert trust_end == pytest.approx(clock.now().timestamp() + 7 * 86400)

    info = await stub.ValidateSession(pb.ValidateSessionRequest(session_token=session.token))
    assert info.account_id == str(alice.account_id)
    assert info.login == "alice" and info.organization_siret == alice.organization_siret
    assert info.role == common_pb2.ROLE_MEMBER
    assert info.last_code_time.ToDatetime().timestamp() == pytest.approx(clock.now().timestamp())


async def test_landline_gets_a_voice_call_reading_the_digits(
    stub: Stub, inbox: Inbox, server: Server
) -> None:
    bob = await seed_account(server, login="bob", phone=LANDLINE)
    pending = (await stub.Login(login_request(bob))).pending_flow
    assert list(pending.channels) == [common_pb2.CHANNEL_VOICE]
    refused = await failure_of(
        stub.Challenge(
            pb.ChallengeRequest(
                flow_id=pending.flow_id, channel=common_pb2.CHANNEL_SMS, client=CLIENT
            )
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHANNEL_NOT_AVAILABLE",
    )
    sent = await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    assert sent.channel == common_pb2.CHANNEL_VOICE
    message = (await inbox.wait_for(1))[0]
    assert message["channel"] == "voice" and message["to"] == LANDLINE
    code = await inbox.latest_code(1)
    spoken = ", ".join(code)
    assert message["text"].count(spoken) == 2  # digit by digit, twice
    verified = await stub.Verify(
        pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
    )
    assert verified.login.session.token


async def test_mobile_may_ask_for_voice(stub: Stub, inbox: Inbox, alice: Seeded) -> None:
    pending = (await stub.Login(login_request(alice))).pending_flow
    sent = await stub.Challenge(
        pb.ChallengeRequest(
            flow_id=pending.flow_id, channel=common_pb2.CHANNEL_VOICE, client=CLIENT
        )
    )
    assert sent.channel == common_pb2.CHANNEL_VOICE
    assert (await inbox.wait_for(1))[0]["channel"] == "voice"


async def test_device_trusted_for_seven_days_from_verification_not_sliding(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    device = (await full_login(stub, inbox, alice)).login.device_token

    clock.advance(3 * 86400)
    again = await stub.Login(login_request(alice, device_token=device))
    assert again.WhichOneof("result") == "session"  # no code within 7 days
    info = await stub.ValidateSession(pb.ValidateSessionRequest(session_token=again.session.token))
    assert info.last_code_time.ToDatetime().timestamp() == pytest.approx(
        clock.now().timestamp() - 3 * 86400
    )

    clock.advance(4 * 86400 - 1)  # 1 s before the 7 days run out: still trusted
    assert (await stub.Login(login_request(alice, device_token=device))).HasField("session")
    clock.advance(1)  # 7 days after the verification: the code again
    assert (await stub.Login(login_request(alice, device_token=device))).HasField("pending_flow")


async def test_device_token_of_another_account_is_not_trusted(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    device = (await full_login(stub, inbox, alice)).login.device_token
    carol = await seed_account(server, login="carol")
    assert (await stub.Login(login_request(carol, device_token=device))).HasField("pending_flow")


async def test_unknown_org_unknown_login_and_wrong_password_answer_alike(
    stub: Stub, alice: Seeded
) -> None:
    answers = [
        await failure_of(stub.Login(login_request(alice, password="wrong password!"))),
        await failure_of(
            stub.Login(login_request(Seeded(alice.organization_siret, "nobody", alice.account_id)))
        ),
        await failure_of(
            stub.Login(login_request(Seeded("73282932000074", alice.login, alice.account_id)))
        ),
    ]
    assert {(a.code, a.reason) for a in answers} == {
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    }

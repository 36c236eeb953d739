"""Attacks on the lockouts that must fail, over gRPC, on SQLite and PostgreSQL: floods of
concurrent password guesses (Login and ChangePassword), wrong codes spread between the holder's
logins, and the operator's unlock, which the audit trail must show.

Work is counted, never timed: argon2 verifications (Passwords.verifications), rows, messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from sqlalchemy import func, select, update
from support import (
    CLIENT,
    MOBILE,
    PASSWORD,
    Inbox,
    Seeded,
    aio_channel,
    failure_of,
    seed_account,
    sign_in,
    step_up,
)

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.db import Account, AuditEvent, Flow, OutboxMessage, Session
from authsvc.policies import lockout
from authsvc.server import Server, create_server
from authsvc.v1 import account_service_pb2 as apb
from authsvc.v1 import account_service_pb2_grpc, auth_service_pb2_grpc
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2 as A

if TYPE_CHECKING:
    from authsvc.v1.account_service_pb2_grpc import AccountServiceAsyncStub
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

NEW_PASSWORD = "Tournesol-Bleu-Vendredi-42"


def login(stub: Any, who: Seeded, password: str, *, name: str | None = None, device: str = ""):  # type: ignore[no-untyped-def]
    return stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=name or who.login,
            password=pb.PasswordCredential(password=password),
            device_token=device,
            client=CLIENT,
        )
    )


async def outcome(call: Any) -> str:
    """What a Login answered ("pending_flow" / "session"), "ok" for another RPC, or the
    ErrorInfo reason of a refusal."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return (await failure_of(_raise(error))).reason
    if isinstance(response, pb.LoginResponse):
        return str(response.WhichOneof("result"))
    return "ok"


async def _raise(error: Exception) -> None:
    raise error


async def account_row(server: Server, who: Seeded) -> Account:
    async with server.app.read() as db:
        account = await db.scalar(select(Account).where(Account.id == who.account_id))
    assert account is not None
    return account


async def count(server: Server, model: Any, *where: Any) -> int:
    async with server.app.read() as db:
        return int(await db.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# ---- item 3: password checks under concurrency --------------------------------------------------


async def test_a_flood_of_guesses_runs_at_most_the_allowed_checks(
    stub: Stub, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    """29 wrong passwords and the right one at once: the old code ran argon2 for each of them
    and let the right one open a flow after the lock. Now at most five wrong passwords are
    checked per lock window (plus the right one, if it got a place)."""
    calls = 30  # login_account allows 30 a minute: every one of them reaches the lockout
    passwords = server.app.passwords
    before = passwords.verifications
    guesses = [f"wrong guess {i}" for i in range(calls - 1)]
    guesses.insert(calls // 2, PASSWORD)
    answers = await asyncio.gather(*(outcome(login(stub, alice, guess)) for guess in guesses))
    checks = passwords.verifications - before
    right = answers[calls // 2]
    wrong = answers[: calls // 2] + answers[calls // 2 + 1 :]
    assert set(wrong) <= {"INVALID_CREDENTIALS", "ACCOUNT_LOCKED"}
    assert wrong.count("INVALID_CREDENTIALS") <= 4
    assert right in ("pending_flow", "ACCOUNT_LOCKED")
    assert checks <= 5 + (right == "pending_flow")
    account = await account_row(server, alice)
    flows = await count(server, Flow, Flow.account_id == alice.account_id)
    assert flows == (1 if right == "pending_flow" else 0)
    assert account.password_checks_pending == 0  # every reservation was settled
    # The lock stands afterwards: even the right password is refused without a check.
    if account.password_lock_count == 1:
        clock.advance(60)  # login_account's budget refills; the lock (15 min) stands
        assert await outcome(login(stub, alice, PASSWORD)) == "ACCOUNT_LOCKED"
        assert passwords.verifications - before == checks


async def test_unknown_logins_get_the_same_answers_and_work_under_a_flood(
    stub: Stub, alice: Seeded, server: Server
) -> None:
    """The same flood on a known and an unknown login: the same answers, the same checks."""
    passwords = server.app.passwords

    async def flood(name: str) -> tuple[list[str], int]:
        before = passwords.verifications
        answers = await asyncio.gather(
            *(outcome(login(stub, alice, f"guess {i}", name=name)) for i in range(30))
        )
        return sorted(answers), passwords.verifications - before

    known, unknown = await flood(alice.login), await flood("nobody-here")
    assert known == unknown
    answers, checks = known
    assert checks == 5
    assert answers.count("INVALID_CREDENTIALS") == 4
    assert answers.count("ACCOUNT_LOCKED") == 26


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> AccountServiceAsyncStub:
    return account_service_pb2_grpc.AccountServiceStub(channel)


def change_password(accounts: Any, session: str, grant: str, current: str):  # type: ignore[no-untyped-def]
    return accounts.ChangePassword(
        apb.ChangePasswordRequest(
            session_token=session,
            grant_token=grant,
            current_password=current,
            new_password=NEW_PASSWORD,
            client=CLIENT,
        )
    )


async def test_a_stolen_session_cannot_guess_the_password_through_change_password(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """300 concurrent ChangePassword calls with a made-up grant, one with the right password:
    the old code checked ~150-190 passwords and answered the right one GRANT_NOT_FOUND, the
    wrong ones INVALID_CREDENTIALS. Now no password is checked without a grant, every answer
    is the same whatever the password, and the calls are rate limited per account."""
    session = (await sign_in(stub, inbox, alice)).session.token
    passwords = server.app.passwords
    before = passwords.verifications
    guesses = [f"wrong guess {i}" for i in range(299)]
    guesses.insert(150, PASSWORD)
    fake = "g" * 43
    answers = await asyncio.gather(
        *(outcome(change_password(accounts, session, fake, guess)) for guess in guesses)
    )
    assert passwords.verifications == before  # nothing checked
    assert set(answers) == {"GRANT_NOT_FOUND", "RATE_LIMITED"}
    assert answers.count("GRANT_NOT_FOUND") == 30  # change_password_account: 30 a minute
    account = await account_row(server, alice)
    assert (account.failed_password_count, account.password_lock_count) == (0, 0)


async def test_change_password_with_a_grant_checks_at_most_five_wrong_passwords(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """With a real grant, 20 concurrent wrong current passwords: five checks, then the lock."""
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    passwords = server.app.passwords
    before = passwords.verifications
    answers = await asyncio.gather(
        *(
            outcome(change_password(accounts, session, grant.grant_token, f"guess {i}"))
            for i in range(20)
        )
    )
    assert passwords.verifications - before == 5
    assert sorted(answers) == ["ACCOUNT_LOCKED"] * 16 + ["INVALID_CREDENTIALS"] * 4
    # Locked: the right password changes nothing and is not checked.
    assert await outcome(change_password(accounts, session, grant.grant_token, PASSWORD)) == (
        "ACCOUNT_LOCKED"
    )
    assert passwords.verifications - before == 5


# ---- item 8: wrong codes between the holder's logins ----------------------------------------


@pytest.fixture
async def bounded(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    """A hard bound of 20 wrong codes (the default is 100): the same rule, fewer codes."""
    server = await create_server(
        settings.model_copy(update={"code_failure_hard_bound": 20}),
        clock=clock,
        listen="127.0.0.1:0",
    )
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def bounded_stub(bounded: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{bounded.port}") as channel:
        yield auth_service_pb2_grpc.AuthServiceStub(channel)


async def guess_codes(stub: Stub, inbox: Inbox, who: Seeded, wrong_codes: int) -> list[str]:
    """With the password: open flows and type wrong codes (five a flow at most)."""
    answers: list[str] = []
    while len(answers) < wrong_codes:
        flow_id = (await login(stub, who, PASSWORD)).pending_flow.flow_id
        sent = await outcome(stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT)))
        if sent != "ok":
            answers.append(sent)  # the send was refused (the factor is locked)
            return answers
        code = int(await inbox.code_to(MOBILE))
        for by in range(1, 1 + min(5, wrong_codes - len(answers))):
            guess = f"{(code + by) % 1_000_000:06d}"
            call = stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=guess, client=CLIENT))
            answers.append(await outcome(call))
            if answers[-1] == "ACCOUNT_LOCKED":
                return answers
    return answers


async def test_the_holders_logins_do_not_reset_the_hard_bound(
    bounded: Server, bounded_stub: Stub, inbox: Inbox, clock: FrozenClock
) -> None:
    """Nine wrong codes between two of the holder's ordinary logins, again and again: the old
    code reset the count at each login and never locked. Now the wrong codes of the window
    add up to the hard bound, which only an operator lifts (and the audit trail says so)."""
    stub, alice = bounded_stub, await seed_account(bounded)
    answers: list[str] = []
    for _ in range(2):
        answers += await guess_codes(stub, inbox, alice, 9)
        await sign_in(stub, inbox, alice)  # the holder logs in with a code: a full success
        clock.advance(86400)  # the per-number send caps refill
    assert answers == ["CODE_MISMATCH"] * 18
    answers = await guess_codes(stub, inbox, alice, 9)
    assert answers == ["CODE_MISMATCH", "ACCOUNT_LOCKED"]  # the 20th wrong code of the window
    # The holder's own login gets no code now, nor a week later: only an operator lifts it.
    for wait in (0, 7 * 86400):
        clock.advance(wait)
        flow_id = (await login(stub, alice, PASSWORD)).pending_flow.flow_id
        locked = await failure_of(
            stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
        )
        assert (locked.reason, locked.retry_after) == ("ACCOUNT_LOCKED", lockout.UNTIL_OPERATOR_S)
    account = await account_row(bounded, alice)
    assert account.code_window_failures == 20

    # The operator's unlock lifts it, and leaves an audit row (actor: the operator).
    assert await lockout.unlock(bounded.app, alice.organization_siret, alice.login)
    assert not await lockout.unlock(bounded.app, alice.organization_siret, "nobody-here")
    async with bounded.app.read() as db:
        rows = (
            await db.scalars(
                select(AuditEvent)
                .where(AuditEvent.event_type == "account.unlocked")
                .order_by(AuditEvent.sequence)
            )
        ).all()
    assert [(r.outcome, r.target_account_id, r.actor_account_id) for r in rows] == [
        ("OK", alice.account_id, None),
        ("ACCOUNT_NOT_FOUND", None, None),
    ]
    assert rows[0].organization_id is not None and '"by": "operator"' in rows[0].details
    assert rows[1].organization_id == rows[0].organization_id
    await sign_in(stub, inbox, alice)
    assert (await account_row(bounded, alice)).code_window_failures == 0


async def test_a_trusted_device_login_resets_no_code_counter(
    stub: Stub, inbox: Inbox, alice: Seeded
) -> None:
    """A login that needed no code said nothing about the codes typed: nine wrong codes, the
    holder's trusted-device login, one more wrong code: the tenth in a row locks (the old
    code reset the count at the trusted-device login)."""
    device = (await sign_in(stub, inbox, alice)).device_token
    assert await guess_codes(stub, inbox, alice, 9) == ["CODE_MISMATCH"] * 9
    assert await outcome(login(stub, alice, PASSWORD, device=device)) == "session"
    assert await guess_codes(stub, inbox, alice, 1) == ["ACCOUNT_LOCKED"]


async def test_a_trusted_device_login_restarts_the_password_count_not_the_codes(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """Both factors passed (the right password on a trusted device): strangers' wrong
    passwords before it no longer count toward the holder's next lock, while wrong codes do."""
    device = (await sign_in(stub, inbox, alice)).device_token
    wrong = [await outcome(login(stub, alice, f"guess {i}")) for i in range(4)]
    assert wrong == ["INVALID_CREDENTIALS"] * 4
    assert await outcome(login(stub, alice, PASSWORD, device=device)) == "session"
    account = await account_row(server, alice)
    assert (account.failed_password_count, account.password_lock_count) == (0, 0)
    again = [await outcome(login(stub, alice, f"again {i}")) for i in range(4)]
    assert again == ["INVALID_CREDENTIALS"] * 4  # the 5th in a row would have locked


async def test_the_holder_hears_of_wrong_codes_after_the_password_once_a_day(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    """Wrong codes after a right password: one email, however many flows and codes (so that
    whoever knows the password cannot flood the mailbox), and again the next day."""

    def notices() -> Any:
        return count(server, OutboxMessage, OutboxMessage.template == "wrong_codes")

    assert await guess_codes(stub, inbox, alice, 8) == ["CODE_MISMATCH"] * 8  # two flows
    assert await notices() == 1
    # Delivered to the holder's address (the dispatcher writes it to the test's outbox file).
    for _ in range(500):
        if any(m["to"] == f"{alice.login}@example.fr" for m in inbox.messages()):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("no notice delivered")
    clock.advance(86400)
    assert await guess_codes(stub, inbox, alice, 1) == ["CODE_MISMATCH"]
    assert await notices() == 2


async def test_the_operators_unlock_is_audited(stub: Stub, alice: Seeded, server: Server) -> None:
    """`authsvc unlock` lifts a lock and the trail says who (the operator) and whom."""
    for i in range(5):
        await outcome(login(stub, alice, f"wrong {i}"))
    assert await outcome(login(stub, alice, PASSWORD)) == "ACCOUNT_LOCKED"
    assert await lockout.unlock(server.app, alice.organization_siret, alice.login)
    assert await outcome(login(stub, alice, PASSWORD)) == "pending_flow"
    async with server.app.read() as db:
        row = await db.scalar(select(AuditEvent).where(AuditEvent.event_type == "account.unlocked"))
    assert row is not None
    assert (row.outcome, row.target_account_id, row.actor_account_id) == (
        "OK",
        alice.account_id,
        None,
    )
    assert '"by": "operator"' in row.details


async def test_the_window_of_wrong_codes_is_fixed_and_starts_again_after_it(
    bounded: Server, bounded_stub: Stub, inbox: Inbox, clock: FrozenClock
) -> None:
    """The hard bound counts the wrong codes of `code_failure_window_s` (30 days) from the first
    of them: eighteen, a window later nine more, is not twenty in one window."""
    stub, alice = bounded_stub, await seed_account(bounded)
    for _ in range(2):
        assert await guess_codes(stub, inbox, alice, 9) == ["CODE_MISMATCH"] * 9
        await sign_in(stub, inbox, alice)
        clock.advance(86400)
    assert (await account_row(bounded, alice)).code_window_failures == 18
    clock.advance(bounded.app.settings.code_failure_window_s)
    assert await guess_codes(stub, inbox, alice, 9) == ["CODE_MISMATCH"] * 9
    assert (await account_row(bounded, alice)).code_window_failures == 9


# ---- a caller who hangs up mid-check ----------------------------------------------------------


@pytest.fixture
async def slow(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    """argon2 made costly enough that a caller can hang up while its check runs."""
    server = await create_server(
        settings.model_copy(update={"argon2_time_cost": 60}), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    yield server
    await server.stop(grace=0)


async def _until(server: Server, who: Seeded, ready: Any, polls: int = 1000) -> Account:
    """Poll the account row (bounded: the test fails, not hangs, when it never happens)."""
    for _ in range(polls):
        account = await account_row(server, who)
        if ready(account):
            return account
        await asyncio.sleep(0.02)
    return account


async def test_a_caller_who_hangs_up_mid_check_still_spends_a_guess(
    slow: Server, clock: FrozenClock
) -> None:
    """Five wrong passwords cancelled while argon2 runs: before, their failures were never
    counted (each place was freed by its lease alone), so guesses whose callers hang up were
    free and the right password went through after the lease. Now each cancelled check is
    settled as the failure it is: the login locks."""
    who = await seed_account(slow)
    async with aio_channel(f"127.0.0.1:{slow.port}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        calls = [login(stub, who, f"wrong guess {i}") for i in range(5)]
        reserved = await _until(slow, who, lambda a: a.password_checks_pending == 5)
        assert reserved.password_checks_pending == 5
        for call in calls:
            call.cancel()
        for call in calls:
            with pytest.raises(asyncio.CancelledError):
                await call
        settled = await _until(slow, who, lambda a: a.password_checks_pending == 0)
        assert settled.password_checks_pending == 0
        assert settled.failed_password_count == 0  # the lock reset the consecutive count
        assert settled.password_lock_count == 1
        clock.advance(lockout.PASSWORD_CHECK_LEASE_S + 1)  # past every lease, inside the lock
        assert await outcome(login(stub, who, PASSWORD)) == "ACCOUNT_LOCKED"


async def test_a_code_lock_set_during_the_password_check_refuses_the_trusted_device(
    slow: Server, inbox: Inbox, clock: FrozenClock
) -> None:
    """The code factor locks (wrong codes of another flow) while a trusted device's argon2
    check runs: the verdict re-reads the lock in its own statement, so no session is written
    and the answer is ACCOUNT_LOCKED (before, the lock read ahead of argon2 let it through)."""
    who = await seed_account(slow)
    async with aio_channel(f"127.0.0.1:{slow.port}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        device = (await sign_in(stub, inbox, who)).device_token
        sessions_before = await count(slow, Session, Session.account_id == who.account_id)
        call = login(stub, who, PASSWORD, device=device)
        await _until(slow, who, lambda a: a.password_checks_pending == 1)
        async with slow.app.write() as db:  # what the other flow's fifth wrong code writes
            await db.execute(
                update(Account)
                .where(Account.id == who.account_id)
                .values(code_locked_until=clock.now() + timedelta(minutes=15))
            )
        assert await outcome(call) == "ACCOUNT_LOCKED"
        assert await count(slow, Session, Session.account_id == who.account_id) == sessions_before
        account = await account_row(slow, who)
        assert account.password_checks_pending == 0


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted device", "new device"])
async def test_a_password_changed_during_the_login_check_opens_nothing(
    stub: Stub,
    accounts: AccountServiceAsyncStub,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    trusted: bool,
) -> None:
    """Attack review (session 5): the thief's Login with the old password (and, on a trusted
    device, the device token) has its argon2 check running when the holder's ChangePassword
    commits, which revokes every session and device. Before, the verdict trusted what it had
    read before the change: the thief got a session (trusted device: after the revocation, so
    it stayed valid) or a code flow (the old password still worked). Now the verdict compares
    the account's security epoch, raised by the change: INVALID_CREDENTIALS, nothing written."""
    signed_in = await sign_in(stub, inbox, alice)
    holder_session = signed_in.session.token
    grant = await step_up(stub, inbox, holder_session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    passwords = server.app.passwords
    verify = passwords.verify
    held, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def held_first(stored: str | None, password: str) -> bool:
        # The first check is the thief's login: it finishes only after the change committed.
        nonlocal calls
        calls += 1
        if calls == 1:
            right = await verify(stored, password)
            held.set()
            await release.wait()
            return right
        return await verify(stored, password)

    monkeypatch.setattr(passwords, "verify", held_first)
    sessions_before = await count(server, Session, Session.account_id == alice.account_id)
    flows_before = await count(server, Flow, Flow.account_id == alice.account_id)
    thief = asyncio.ensure_future(
        outcome(login(stub, alice, PASSWORD, device=signed_in.device_token if trusted else ""))
    )
    await asyncio.wait_for(held.wait(), 30)
    changed = await change_password(accounts, holder_session, grant.grant_token, PASSWORD)
    assert changed.revoked_devices == 1
    release.set()
    assert await thief == "INVALID_CREDENTIALS"
    # Nothing written for the thief: no session beside the holder's, no flow.
    assert await count(server, Session, Session.account_id == alice.account_id) == sessions_before
    assert await count(server, Flow, Flow.account_id == alice.account_id) == flows_before
    live = await count(
        server, Session, Session.account_id == alice.account_id, Session.revoked_at.is_(None)
    )
    assert live == 1  # the holder's own
    # The check was released, not counted as a wrong password: the holder is not locked out.
    account = await account_row(server, alice)
    assert (account.password_checks_pending, account.failed_password_count) == (0, 0)
    assert await outcome(login(stub, alice, NEW_PASSWORD)) == "pending_flow"


async def test_a_password_change_fails_the_flows_opened_before_it(
    stub: Stub, accounts: AccountServiceAsyncStub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    """Attack review (session 5, round 2): a thief with the phished password opens a login
    flow and holds its code; the holder changes the password. The flow opened with the old
    password must not complete into a session (before, Verify within 15 minutes gave the thief
    a session and a device token)."""
    holder = (await sign_in(stub, inbox, alice)).session.token
    grant = await step_up(stub, inbox, holder, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    pending = (await login(stub, alice, PASSWORD)).pending_flow
    await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    code = await inbox.code_to(MOBILE)  # the thief has the code too (say, a SIM swap)
    await change_password(accounts, holder, grant.grant_token, PASSWORD)
    verified = stub.Verify(pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT))
    assert await outcome(verified) == "FLOW_FAILED"
    live = await count(
        server, Session, Session.account_id == alice.account_id, Session.revoked_at.is_(None)
    )
    assert live == 1  # the holder's own

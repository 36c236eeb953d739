"""The login flow as a state machine, checked against a model by Hypothesis.

Random sequences of sends, right and wrong codes, and clock jumps run against the real flow code
and a real SQLite database; after each step the service's answer must be the one the model
predicts from the requirements (5 wrong codes, 5 sends, 30 s cooldown, 5 min codes, 15 min flow,
single use), and the stored attempt count never passes the cap.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import select
from support import MOBILE, SIRET, START

from authsvc.accounts import create_account, create_organization
from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.courier.outbox import Payload
from authsvc.db import Flow, FlowPurpose, FlowStatus, OutboxMessage, Role
from authsvc.db.migrate import upgrade
from authsvc.errors import Failure
from authsvc.flows.challenge import ChallengeRequest, challenge
from authsvc.flows.login import ClientInfo
from authsvc.flows.verify import VerifyRequest, verify

_WORKDIR = Path(tempfile.mkdtemp(prefix="authsvc-fsm-"))
_SETTINGS = Settings(
    database_url=f"sqlite+aiosqlite:///{_WORKDIR / 'fsm.db'}",
    secret_key_file=_WORKDIR / "secret.key",
    dispatcher_enabled=False,
)
upgrade(_SETTINGS.database_url)
_ORGANIZATION: list[uuid.UUID] = []
T = TypeVar("T")
CLIENT = ClientInfo(ip_address="203.0.113.9", user_agent="fsm")


async def _account(app: App) -> uuid.UUID:
    """A fresh account per example: the account's code-failure counter (the 2FA lock) spans
    flows, so a shared account would carry state from one example into the next."""
    async with app.write() as db:
        if not _ORGANIZATION:
            org = await create_organization(app, db, siret=SIRET, name="FSM")
            await db.flush()
            _ORGANIZATION.append(org.id)
        account = await create_account(
            app,
            db,
            organization_id=_ORGANIZATION[0],
            login=f"fsm-{uuid.uuid4().hex[:12]}",
            display_name="FSM",
            email="fsm@example.fr",
            phone=MOBILE,
            role=Role.MEMBER,
            password_hash="x",
        )
    return account.id


class LoginFlowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FrozenClock(START)
        self.app = App.build(_SETTINGS, self.clock)
        self.flow_id = self.run(self._open_flow())
        # The model.
        self.now = 0.0
        self.status = "pending"
        self.sends = 0
        self.last_send: float | None = None
        self.code: str | None = None
        self.code_expires = 0.0
        self.failures = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _open_flow(self) -> uuid.UUID:
        account_id = await _account(self.app)
        flow_id = uuid.uuid4()
        now = self.clock.now()
        async with self.app.write() as db:
            db.add(
                Flow(
                    id=flow_id,
                    purpose=FlowPurpose.LOGIN,
                    account_id=account_id,
                    status=FlowStatus.PENDING,
                    created_at=now,
                    expires_at=now + timedelta(seconds=900),
                    completed_at=None,
                    user_agent="fsm",
                    ip_address="203.0.113.9",
                    challenge_id=None,
                    channel=None,
                    code_digest=None,
                    code_expires_at=None,
                    idempotency_key=None,
                    send_count=0,
                    last_sent_at=None,
                    failed_attempts=0,
                )
            )
        return flow_id

    async def _delivered_code(self) -> str:
        async with self.app.read() as db:
            challenge_id = await db.scalar(select(Flow.challenge_id).where(Flow.id == self.flow_id))
            message = await db.scalar(select(OutboxMessage).where(OutboxMessage.id == challenge_id))
        assert message is not None and message.payload_sealed is not None
        text = Payload.loads(self.app.keys.sealer.open(message.payload_sealed, message.id.bytes))
        return text.text.rsplit("#", 1)[1]

    def _closed_reason(self) -> str | None:
        if self.status == "completed":
            return "FLOW_COMPLETED"
        if self.status == "failed":
            return "FLOW_FAILED"
        if self.now >= 900:
            return "FLOW_EXPIRED"
        return None

    def _outcome(self, call: Coroutine[Any, Any, object]) -> str:
        try:
            self.run(call)
        except Failure as failure:
            return failure.reason
        return "OK"

    @rule(seconds=st.sampled_from([1, 10, 29, 30, 31, 120, 299, 300, 600]))
    def wait(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.now += seconds

    @rule()
    def send(self) -> None:
        expected = self._closed_reason()
        if expected is None and self.sends >= 5:
            expected = "SEND_LIMIT_REACHED"
        if expected is None and self.last_send is not None and self.now < self.last_send + 30:
            expected = "RESEND_TOO_SOON"
        got = self._outcome(challenge(self.app, ChallengeRequest(self.flow_id, None, None)))
        assert got == (expected or "OK")
        if got == "OK":
            self.sends += 1
            self.last_send = self.now
            self.code_expires = self.now + 300
            self.code = self.run(self._delivered_code())

    def _verify(self, right: bool) -> None:
        expected = self._closed_reason()
        if expected is None and self.code is None:
            expected = "NO_ACTIVE_CHALLENGE"
        if expected is None and self.now >= self.code_expires:
            expected = "CODE_EXPIRED"
        if expected is None and not right:
            expected = "CODE_MISMATCH"
        assert self.code is not None or expected is not None
        code = self.code or "000000"
        guess = code if right else f"{(int(code) + 1) % 1_000_000:06d}"
        got = self._outcome(verify(self.app, VerifyRequest(self.flow_id, guess, CLIENT)))
        assert got == (expected or "OK")
        if got == "OK":
            self.status = "completed"
        elif got == "CODE_MISMATCH":
            self.failures += 1
            if self.failures >= 5:
                self.status = "failed"

    @rule()
    def verify_right_code(self) -> None:
        self._verify(right=True)

    @rule()
    def verify_wrong_code(self) -> None:
        self._verify(right=False)

    @invariant()
    def stored_state_matches_the_model(self) -> None:
        async def stored() -> Flow | None:
            async with self.app.read() as db:
                return await db.scalar(select(Flow).where(Flow.id == self.flow_id))

        flow = self.run(stored())
        assert flow is not None
        assert flow.failed_attempts == self.failures <= 5
        assert flow.send_count == self.sends <= 5
        assert flow.status == self.status

    def teardown(self) -> None:
        self.run(self.app.close())
        self.loop.close()


LoginFlowMachine.TestCase.settings = hypothesis_settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
test_login_flow_state_machine = LoginFlowMachine.TestCase

"""The automatic switch to voice (AUTHSVC_VOICE_FALLBACK_AFTER_S > 0): an SMS code sent, yet
without a final receipt that long after, is followed by a voice call on the same number.

The switch is a Challenge on the flow like the user's own "call me instead" (flows/challenge.py),
with the flow's end-user IP: every rule applies as to any send, decided in the database as
always (the flow's send cap and cooldown in one conditional UPDATE, the pumping breaker, the
number's caps, the send budgets), and the send is counted; nothing is reset. The call carries a
new code: the SMS code is not kept in clear anywhere once sent (only its digest), so "the same
code" cannot be read out; the SMS one is superseded, as by any resend. The backend's
idempotency key moves to the voice challenge, so asking again with it reports the call.

Each dispatcher process looks every FALLBACK_INTERVAL_S. A challenge is switched at most once
per process (`tried`); across processes the flow's conditional UPDATE lets one switch through
(the others meet the cooldown and are refused, which is logged and changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import structlog

from authsvc.app import App
from authsvc.db.statements import voice_fallback
from authsvc.errors import Failure
from authsvc.flows.challenge import ChallengeRequest, challenge, load_flow

log = structlog.get_logger("authsvc.voice_fallback")

FALLBACK_INTERVAL_S = 2.0


class VoiceFallback:
    def __init__(self, app: App) -> None:
        self._app = app
        self._tried: set[uuid.UUID] = set()  # SMS challenges switched (or refused) here

    async def run_once(self) -> int:
        """Switch the due flows; the number of voice calls queued."""
        settings = self._app.settings
        if settings.voice_fallback_after_s <= 0:
            return 0
        now = self._app.clock.now()
        switched = 0
        last: voice_fallback.Awaiting | None = None
        while True:  # every page: those refused here stay candidates, ahead of newer ones
            due = await self._app.db.read(
                voice_fallback.sms_awaiting_receipt,
                now,
                now - timedelta(seconds=settings.voice_fallback_after_s),
                settings.max_sends_per_flow,
                last,
            )
            for awaiting in due:
                if awaiting.challenge_id in self._tried:
                    continue
                self._tried.add(awaiting.challenge_id)
                if await self._switch(awaiting):
                    switched += 1
            if len(due) < voice_fallback.BATCH:
                break
            last = due[-1]
        if len(self._tried) > 100_000:  # challenges live minutes: forget the old ones
            self._tried.clear()
        return switched

    async def _switch(self, awaiting: voice_fallback.Awaiting) -> bool:
        flow_id, challenge_id = awaiting.flow_id, awaiting.challenge_id
        try:
            flow, _ = await load_flow(self._app, flow_id)
            if flow.challenge_id != challenge_id:  # the user asked again meanwhile
                return False
            view = await challenge(
                self._app,
                ChallengeRequest(
                    flow_id=flow_id,
                    channel="voice",
                    idempotency_key=flow.idempotency_key,
                    ip_address=awaiting.ip_address,
                    switch_from_sms=True,
                ),
            )
        except Failure as refusal:  # a cap, a budget, no voice for this number: nothing sent
            log.info(
                "voice_fallback_refused",
                flow_id=str(flow_id),
                sms_message_id=str(challenge_id),
                reason=refusal.reason,
            )
            return False
        log.info(
            "voice_fallback",
            flow_id=str(flow_id),
            sms_message_id=str(challenge_id),
            voice_message_id=str(view.challenge_id),
            to=view.masked_destination,
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a database error: try again at the next interval
                log.exception("voice_fallback_error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FALLBACK_INTERVAL_S)

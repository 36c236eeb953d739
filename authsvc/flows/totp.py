"""CHANNEL_TOTP in a flow: the window a Challenge opens, and the match of an app's code.

A TOTP challenge sends nothing: it makes a new challenge the flow's current one, with the same
lifetime as a code sent by SMS (the attempt window), so that Verify's rules (one current
challenge, its expiry, the flow's attempts) apply unchanged. Verify then checks the code against
the account's confirmed app (the Rust core: every step of the +-1 window compared in constant
time, steps up to the last accepted one refused) and, when it matches, hands the matched step
to the completion, which claims it in the winner's transaction (db/statements/factors.py).
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta

from authsvc import audit
from authsvc.app import App
from authsvc.db.statements import factors, flows
from authsvc.db.statements.flows import AccountRow, FlowRow
from authsvc.flows.views import ChallengeView
from authsvc.otp import verify_totp

# The parameters every authenticator app takes by default (RFC 6238's): SHA-1, 6 digits, 30 s.
STEP_S = 30
DIGITS = 6
ALGORITHM = "sha1"
WINDOW = 1  # one step either side: a clock 30 s off, or a code typed as it changed


def secret_aad(factor_id: uuid.UUID) -> bytes:
    """What binds a sealed secret to its row (a ciphertext moved to another row fails)."""
    return b"second_factors.secret:" + factor_id.bytes


def open_secret(app: App, factor_id: uuid.UUID, sealed: bytes) -> bytes:
    text = app.keys.sealer.open(sealed, secret_aad(factor_id))
    return base64.b32decode(text + "=" * (-len(text) % 8))


async def open_window(
    app: App, flow: FlowRow, account: AccountRow, now: datetime
) -> ChallengeView | None:
    """Challenge with CHANNEL_TOTP: the attempt window opens, nothing is sent (a code sent and
    still valid stays valid: flows.open_factor_window). None: the flow closed between its read
    and this write (nothing written)."""
    window = flows.FactorWindow(
        flow_id=flow.id,
        now=now,
        channel="totp",
        challenge_id=uuid.uuid4(),
        code_expires_at=now + timedelta(seconds=app.settings.code_ttl_s),
        started=audit.event(
            app.clock,
            "totp.challenged",
            organization_id=account.organization_id,
            actor=account.id,
            flow_id=str(flow.id),
            purpose=str(flow.purpose),
            channel="totp",
        ),
    )
    opened = await app.db.write(flows.open_factor_window, window)
    if opened is None:
        return None
    return ChallengeView(
        challenge_id=opened.challenge_id,
        channel="totp",
        masked_destination="",
        code_expires_at=opened.code_expires_at,
        resend_at=now,
        sends_remaining=max(app.settings.max_sends_per_flow - flow.send_count, 0),
        delivery_status="none",
    )


async def match(
    app: App, account_id: uuid.UUID, code: str, now: datetime
) -> factors.StepClaim | None:
    """The step to claim if `code` is the account's app's code now (+-1 step), not before or
    at its last accepted step; None otherwise (also when the app was removed meanwhile)."""
    factor = await app.db.read(factors.confirmed_totp, account_id)
    if factor is None:
        return None
    step = verify_totp(
        open_secret(app, factor.id, factor.secret_sealed),
        code,
        now.timestamp(),
        window=WINDOW,
        step=STEP_S,
        digits=DIGITS,
        algorithm=ALGORITHM,
        last_used_step=factor.last_used_step,
    )
    return None if step is None else factors.StepClaim(factor.id, step, now)

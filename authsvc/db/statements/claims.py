"""The claim a second factor's answer makes in the transaction that completes its flow: an
authenticator app's time step (factors.StepClaim) or a passkey's signature counter
(passkeys.CounterClaim). Each is one conditional UPDATE; refused, it undoes the completion.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from authsvc.db.statements import factors, passkeys

Claim = factors.StepClaim | passkeys.CounterClaim


def statement(claim: Claim) -> tuple[Any, dict[str, Any]]:
    """The claim's UPDATE and its parameters (it returns a row when it wins)."""
    if isinstance(claim, factors.StepClaim):
        return factors.CLAIM_STEP, factors.claim_params(claim)
    return passkeys.CLAIM_COUNTER, passkeys.counter_params(claim)


def claim(connection: Connection, claim: Claim) -> bool:
    update, params = statement(claim)
    return connection.execute(update, params).first() is not None


def audit_details(claim: Claim | None) -> dict[str, str]:
    """The audit details that say which factor answered (none: a code sent to the phone)."""
    if isinstance(claim, factors.StepClaim):
        return {"channel": "totp", "factor_id": str(claim.factor_id)}
    if isinstance(claim, passkeys.CounterClaim):
        return {"channel": "passkey", "factor_id": str(claim.credential_row_id)}
    return {}

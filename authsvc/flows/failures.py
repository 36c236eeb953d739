"""The refusals a flow can answer, named once so every caller uses the same status and reason."""

from __future__ import annotations

from authsvc.errors import Failure


def invalid_credentials() -> Failure:
    # One answer for an unknown organisation, an unknown login and a wrong password.
    return Failure("UNAUTHENTICATED", "INVALID_CREDENTIALS", "login or password is incorrect")


def account_not_active() -> Failure:
    return Failure("FAILED_PRECONDITION", "ACCOUNT_NOT_ACTIVE", "this account is not active")


def account_not_ready() -> Failure:
    return Failure(
        "FAILED_PRECONDITION",
        "ACCOUNT_NOT_READY",
        "this account has no valid phone number: an administrator must set one",
    )


def flow_not_found() -> Failure:
    return Failure("NOT_FOUND", "FLOW_NOT_FOUND", "no such flow")


def flow_expired() -> Failure:
    return Failure("FAILED_PRECONDITION", "FLOW_EXPIRED", "this flow has expired; log in again")


def flow_completed() -> Failure:
    return Failure("FAILED_PRECONDITION", "FLOW_COMPLETED", "this flow is already completed")


def flow_failed() -> Failure:
    return Failure(
        "FAILED_PRECONDITION", "FLOW_FAILED", "too many wrong codes; this flow is closed"
    )


def no_active_challenge() -> Failure:
    return Failure(
        "FAILED_PRECONDITION", "NO_ACTIVE_CHALLENGE", "no code was sent yet: call Challenge"
    )


def code_expired() -> Failure:
    return Failure("FAILED_PRECONDITION", "CODE_EXPIRED", "this code has expired; ask a new one")


def code_mismatch(attempts_remaining: int) -> Failure:
    return Failure(
        "UNAUTHENTICATED",
        "CODE_MISMATCH",
        "wrong code",
        metadata={"attempts_remaining": str(attempts_remaining)},
    )


def resend_too_soon(retry_after: float) -> Failure:
    return Failure(
        "RESOURCE_EXHAUSTED",
        "RESEND_TOO_SOON",
        "a code was sent moments ago; wait before asking another",
        retry_after=retry_after,
    )


def send_limit_reached(last_code_valid_for: float) -> Failure:
    # RetryInfo: the last code sent can still be entered for this long; after that, log in again.
    return Failure(
        "RESOURCE_EXHAUSTED",
        "SEND_LIMIT_REACHED",
        "no more codes for this flow; enter the last one or log in again",
        retry_after=max(last_code_valid_for, 0.0),
    )


def channel_not_available(channel: str) -> Failure:
    return Failure(
        "FAILED_PRECONDITION",
        "CHANNEL_NOT_AVAILABLE",
        f"this account's phone cannot receive codes by {channel}",
        metadata={"channel": channel},
    )


def passkey_by_ceremony() -> Failure:
    """Challenge with CHANNEL_PASSKEY: a passkey answers a WebAuthn challenge, which only
    PasskeyService's ceremony carries (its options out, the browser's assertion in)."""
    return Failure(
        "FAILED_PRECONDITION",
        "CHANNEL_NOT_AVAILABLE",
        "a passkey answers through PasskeyService: BeginPasskeyAssertion, then "
        "FinishPasskeyAssertion",
        metadata={"channel": "passkey"},
    )


def session_invalid() -> Failure:
    return Failure("UNAUTHENTICATED", "SESSION_INVALID", "unknown or revoked session")


def session_expired() -> Failure:
    return Failure("UNAUTHENTICATED", "SESSION_EXPIRED", "this session has expired")


def not_implemented(what: str) -> Failure:
    return Failure("UNIMPLEMENTED", "NOT_IMPLEMENTED", f"{what} is not available yet")

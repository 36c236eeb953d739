"""Why an assertion is refused: one stable ErrorInfo reason per cause."""

from __future__ import annotations

from authsvc.errors import Failure


def refused(reason: str, message: str, *, claim: str | None = None) -> Failure:
    status = (
        "INVALID_ARGUMENT"
        if reason in ("ASSERTION_MALFORMED", "ASSERTION_TOO_LARGE")
        else ("UNAUTHENTICATED")
    )
    metadata = {"claim": claim} if claim else {}
    return Failure(status, reason, message, metadata=metadata)


def siret_mismatch() -> Failure:
    return Failure(
        "PERMISSION_DENIED", "SIRET_MISMATCH", "the assertion is for another organisation"
    )


def identity_not_linked() -> Failure:
    return Failure(
        "FAILED_PRECONDITION",
        "IDENTITY_NOT_LINKED",
        "this identity is linked to no account: log in with your password and a code, then link it",
    )


def identity_already_linked() -> Failure:
    return Failure(
        "ALREADY_EXISTS", "IDENTITY_ALREADY_LINKED", "this identity or issuer is already linked"
    )

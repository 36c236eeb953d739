"""Exceptions shared across authsvc.

The native module (`authsvc._otp_core`) raises `OtpInputError` for bad arguments: its one Rust
error enum is converted into these classes in a single place (the PyO3 glue).
"""

from __future__ import annotations


class AuthsvcError(Exception):
    """Base class of every exception authsvc defines."""


class OtpInputError(AuthsvcError, ValueError):
    """A primitive of otp_core was called with an argument it cannot accept."""


class Failure(AuthsvcError):
    """A request the service refuses, with the gRPC status and the stable ErrorInfo reason.

    `reason` is the name of an `authsvc.v1.ErrorReason` value without its prefix (for example
    "CODE_MISMATCH"); the API layer turns a Failure into a google.rpc.Status once, in one place.
    `status` is the name of a grpc.StatusCode (kept as text so the domain does not import grpc).
    """

    def __init__(
        self,
        status: str,
        reason: str,
        message: str,
        *,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
        quota: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}
        self.retry_after = retry_after
        # The limit that was hit (QuotaFailure subject: "ip", "phone_number", "organization",
        # "global", ...); set only on RATE_LIMITED.
        self.quota = quota


def invalid_field(field: str, message: str) -> Failure:
    """INVALID_ARGUMENT for one request field; the field's path goes into the ErrorInfo."""
    return Failure("INVALID_ARGUMENT", "INVALID_FIELD", message, metadata={"field": field})


def rate_limited(quota: str, retry_after: float) -> Failure:
    """RESOURCE_EXHAUSTED / RATE_LIMITED: RetryInfo and a QuotaFailure naming the limit."""
    return Failure(
        "RESOURCE_EXHAUSTED",
        "RATE_LIMITED",
        f"too many requests ({quota}); retry later",
        retry_after=max(retry_after, 0.0),
        quota=quota,
    )


class LimiterUnavailable(AuthsvcError):
    """The shared rate-limit store (Redis) cannot be reached: sends fail closed (UNAVAILABLE)."""


class OtpEntropyError(AuthsvcError, OSError):
    """The operating system's random source failed (raised by `authsvc._otp_core`)."""

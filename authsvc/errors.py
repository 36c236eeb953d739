"""Exceptions shared across authsvc.

The native module (`authsvc._otp_core`) raises `OtpInputError` for bad arguments: its one Rust
error enum is converted into these classes in a single place (the PyO3 glue).
"""

from __future__ import annotations


class AuthsvcError(Exception):
    """Base class of every exception authsvc defines."""


class OtpInputError(AuthsvcError, ValueError):
    """A primitive of otp_core was called with an argument it cannot accept."""

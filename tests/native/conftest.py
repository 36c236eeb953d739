"""Fixtures for the native-core tests (authsvc.otp / otp_core)."""

from __future__ import annotations

from collections.abc import Callable

import otp_stats
import pytest

# RFC 6238 appendix B seeds: the ASCII string "1234567890" repeated to the hash's output size.
RFC6238_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}


@pytest.fixture
def rfc6238_seeds() -> dict[str, bytes]:
    return dict(RFC6238_SEEDS)


@pytest.fixture
def uniformity_p_values() -> Callable[[list[str]], list[float]]:
    """See `otp_stats.uniformity_p_values`."""
    return otp_stats.uniformity_p_values

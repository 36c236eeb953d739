"""Fixtures for the native-core tests (authsvc.otp / otp_core).

The chi-square helpers are here, served as fixtures, rather than in an importable module:
the test files then import nothing from this directory (no sys.path or mypy_path assumptions).
No scipy: the closed forms below are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

# RFC 6238 appendix B seeds: the ASCII string "1234567890" repeated to the hash's output size.
RFC6238_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}


def _chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X chi-square with `df` degrees of freedom, in closed form.

    With y = x / 2: for even df = 2m, Q = e^-y * sum_{i<m} y^i / i!; for odd df = 2m + 1,
    Q = erfc(sqrt(y)) + e^-y * sum_{i<m} y^(i+1/2) / Gamma(i + 3/2). Terms are summed in log
    space so large x and df stay finite.
    """
    if x <= 0:
        return 1.0
    y = x / 2.0
    m, odd = divmod(df, 2)
    total = math.erfc(math.sqrt(y)) if odd else 0.0
    for i in range(m):
        if odd:
            log_term = (i + 0.5) * math.log(y) - y - math.lgamma(i + 1.5)
        else:
            log_term = i * math.log(y) - y - math.lgamma(i + 1)
        total += math.exp(log_term)
    return min(total, 1.0)


def _chi2_statistic(observed: list[int]) -> float:
    """Pearson's statistic against the uniform distribution over len(observed) cells."""
    n = sum(observed)
    expected = n / len(observed)
    return sum((o - expected) ** 2 / expected for o in observed)


def _uniformity_p_values(codes: list[str]) -> list[float]:
    """Chi-square p-values of a list of equal-length numeric codes.

    First the leading two digits (100 cells): a generator reducing a too-narrow random integer
    modulo 10**digits over-represents the *low* values, which shows up in the leading digits
    (bucketing by `value % k` would hide it). Then each digit position (10 cells each): a
    generator drawing each digit as `byte % 10` favours 0..5 in every position.
    """
    width = len(codes[0])
    leading = [0] * 100
    for code in codes:
        leading[int(code[:2])] += 1
    joined = "".join(codes)
    p = [_chi2_sf(_chi2_statistic(leading), 99)]
    for pos in range(width):
        column = joined[pos::width]
        p.append(_chi2_sf(_chi2_statistic([column.count(str(d)) for d in range(10)]), 9))
    return p


@pytest.fixture
def rfc6238_seeds() -> dict[str, bytes]:
    return dict(RFC6238_SEEDS)


@pytest.fixture
def chi2_sf() -> Callable[[float, int], float]:
    return _chi2_sf


@pytest.fixture
def chi2_statistic() -> Callable[[list[int]], float]:
    return _chi2_statistic


@pytest.fixture
def uniformity_p_values() -> Callable[[list[str]], list[float]]:
    return _uniformity_p_values

"""Statistics helpers for the native-core tests (no scipy: closed forms are enough)."""

from __future__ import annotations

import math


def chi2_sf(x: float, df: int) -> float:
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


def chi2_statistic(observed: list[int]) -> float:
    """Pearson's statistic against the uniform distribution over len(observed) cells."""
    n = sum(observed)
    expected = n / len(observed)
    return sum((o - expected) ** 2 / expected for o in observed)


def uniformity_p_values(codes: list[str]) -> list[float]:
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
    p = [chi2_sf(chi2_statistic(leading), 99)]
    for pos in range(width):
        column = joined[pos::width]
        p.append(chi2_sf(chi2_statistic([column.count(str(d)) for d in range(10)]), 9))
    return p

"""Random codes: shape, range of digits, and a chi-square uniformity test on a million codes."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from authsvc import otp

# A correct generator fails one of the 7 checks with probability about 7e-7.
ALPHA = 1e-7


@pytest.mark.parametrize("digits", range(otp.MIN_DIGITS, otp.MAX_DIGITS + 1))
def test_code_shape(digits: int) -> None:
    code = otp.generate_code(digits)
    assert len(code) == digits and code.isdigit() and code.isascii()
    codes = otp.generate_codes(200, digits)
    assert len(codes) == 200
    assert all(len(c) == digits and c.isdigit() and c.isascii() for c in codes)
    # 200 draws from 10**6 or more values: a repeat-free batch is overwhelmingly likely,
    # a generator stuck on one value is not.
    assert len(set(codes)) > 190


def test_defaults_and_empty_batch() -> None:
    assert len(otp.generate_code()) == 6
    assert otp.generate_codes(0) == []
    assert all(len(c) == 6 for c in otp.generate_codes(5))


def test_batches_are_independent() -> None:
    # Each batch is seeded afresh from the OS: two batches never repeat one another.
    assert otp.generate_codes(50, 10) != otp.generate_codes(50, 10)


def test_chi2_sf_matches_tables(chi2_sf: Callable[[float, int], float]) -> None:
    # Upper 5 % and 0.1 % points from standard chi-square tables.
    assert chi2_sf(16.919, 9) == pytest.approx(0.05, rel=1e-3)
    assert chi2_sf(27.877, 9) == pytest.approx(0.001, rel=2e-3)
    assert chi2_sf(123.225, 99) == pytest.approx(0.05, rel=1e-3)
    assert chi2_sf(18.307, 10) == pytest.approx(0.05, rel=1e-3)
    assert chi2_sf(0.0, 5) == 1.0


def test_million_codes_are_uniform(
    uniformity_p_values: Callable[[list[str]], list[float]],
) -> None:
    codes: list[str] = []
    for _ in range(4):  # a batch and the GIL-free path, in four calls
        codes.extend(otp.generate_codes(250_000, 6))
    assert len(codes) == 1_000_000
    p_values = uniformity_p_values(codes)
    assert min(p_values) > ALPHA, p_values


def test_single_code_path_is_uniform(
    uniformity_p_values: Callable[[list[str]], list[float]],
) -> None:
    # generate_code reads the OS CSPRNG directly: a smaller sample, same checks.
    codes = [otp.generate_code(6) for _ in range(100_000)]
    assert min(uniformity_p_values(codes)) > ALPHA


def test_the_uniformity_check_can_fail(
    uniformity_p_values: Callable[[list[str]], list[float]],
    chi2_sf: Callable[[float, int], float],
    chi2_statistic: Callable[[list[int]], float],
) -> None:
    """The same statistic rejects the two classic biased generators at this sample size."""
    rng = random.Random(20240601)
    # 1. Modulo bias: a 20-bit integer reduced mod 10**6 makes 0..48575 twice as likely.
    modulo_biased = [f"{rng.getrandbits(20) % 1_000_000:06d}" for _ in range(1_000_000)]
    assert min(uniformity_p_values(modulo_biased)) < ALPHA
    # 2. Per-digit bias: each digit as byte % 10 favours 0..5 (26/256 against 25/256).
    table = bytes(48 + b % 10 for b in range(256))
    digits = os.urandom(6_000_000).translate(table).decode("ascii")
    byte_biased = [digits[i : i + 6] for i in range(0, len(digits), 6)]
    assert min(uniformity_p_values(byte_biased)) < ALPHA
    # And the statistic itself: a perfectly flat histogram has p = 1.
    assert chi2_sf(chi2_statistic([100] * 10), 9) == 1.0

"""RFC 4226 appendix D and RFC 6238 appendix B through the Python facade."""

from __future__ import annotations

import pytest

from authsvc import otp

RFC4226_SECRET = b"12345678901234567890"
RFC4226_CODES = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]
# RFC 4226 appendix D "Truncated" decimal column: the 31-bit value before reduction.
RFC4226_TRUNCATED = [
    1284755224,
    1094287082,
    137359152,
    1726969429,
    1640338314,
    868254676,
    1918287922,
    82162583,
    673399871,
    645520489,
]

# RFC 6238 appendix B: (time, mode, 8-digit TOTP).
RFC6238_TABLE = [
    (59, "sha1", "94287082"),
    (59, "sha256", "46119246"),
    (59, "sha512", "90693936"),
    (1111111109, "sha1", "07081804"),
    (1111111109, "sha256", "68084774"),
    (1111111109, "sha512", "25091201"),
    (1111111111, "sha1", "14050471"),
    (1111111111, "sha256", "67062674"),
    (1111111111, "sha512", "99943326"),
    (1234567890, "sha1", "89005924"),
    (1234567890, "sha256", "91819424"),
    (1234567890, "sha512", "93441116"),
    (2000000000, "sha1", "69279037"),
    (2000000000, "sha256", "90698825"),
    (2000000000, "sha512", "38618901"),
    (20000000000, "sha1", "65353130"),
    (20000000000, "sha256", "77737706"),
    (20000000000, "sha512", "47863826"),
]


@pytest.mark.parametrize("counter", range(10))
def test_rfc4226_hotp(counter: int) -> None:
    assert otp.hotp(RFC4226_SECRET, counter) == RFC4226_CODES[counter]
    # Ten digits show the whole truncated value (zero-padded).
    assert otp.hotp(RFC4226_SECRET, counter, digits=10) == f"{RFC4226_TRUNCATED[counter]:010d}"


@pytest.mark.parametrize(("at", "algorithm", "expected"), RFC6238_TABLE)
def test_rfc6238_totp(
    at: int, algorithm: str, expected: str, rfc6238_seeds: dict[str, bytes]
) -> None:
    secret = rfc6238_seeds[algorithm]
    assert otp.totp(secret, at, digits=8, algorithm=algorithm) == expected
    assert otp.totp(secret, float(at) + 0.999, digits=8, algorithm=algorithm) == expected
    # The same code verifies, and the matched step is floor(at / 30).
    assert otp.verify_totp(secret, expected, at, digits=8, algorithm=algorithm) == at // 30
    assert otp.verify_totp(secret, expected, at, digits=8, algorithm=algorithm, window=0) == (
        at // 30
    )


@pytest.mark.parametrize(("at", "algorithm", "expected"), RFC6238_TABLE)
def test_rfc6238_as_hotp_of_step(
    at: int, algorithm: str, expected: str, rfc6238_seeds: dict[str, bytes]
) -> None:
    # RFC 6238 is HOTP of T = floor((at - T0) / X).
    secret = rfc6238_seeds[algorithm]
    assert otp.hotp(secret, at // 30, digits=8, algorithm=algorithm) == expected


def test_t0_and_step_shift_the_counter(rfc6238_seeds: dict[str, bytes]) -> None:
    secret = rfc6238_seeds["sha1"]
    # With T0 = 1000 and a 60 s step, time 1000 + 60 * 7 + 59 is step 7.
    assert otp.totp(secret, 1000 + 60 * 7 + 59, step=60, t0=1000) == otp.hotp(secret, 7)
    assert otp.verify_totp(secret, otp.hotp(secret, 7), 1000 + 60 * 7, step=60, t0=1000) == 7


def test_verify_window_and_replay(rfc6238_seeds: dict[str, bytes]) -> None:
    secret = rfc6238_seeds["sha1"]
    at = 1111111109  # step 37037036, code 07081804
    step = at // 30
    code = "07081804"
    assert otp.verify_totp(secret, code, at + 30, digits=8) == step
    assert otp.verify_totp(secret, code, at - 30, digits=8) == step
    assert otp.verify_totp(secret, code, at + 30, digits=8, window=0) is None
    assert otp.verify_totp(secret, code, at + 60, digits=8) is None
    assert otp.verify_totp(secret, code, at + 60, digits=8, window=2) == step
    # Replay refusal: the step just used, or any earlier one, never matches again.
    assert otp.verify_totp(secret, code, at, digits=8, last_used_step=step) is None
    assert otp.verify_totp(secret, code, at, digits=8, last_used_step=step + 5) is None
    assert otp.verify_totp(secret, code, at, digits=8, last_used_step=step - 1) == step
    # Wrong, short, long and empty codes simply do not match.
    for wrong in ("07081805", "0708180", "070818041", "", "abcdefgh"):
        assert otp.verify_totp(secret, wrong, at, digits=8) is None

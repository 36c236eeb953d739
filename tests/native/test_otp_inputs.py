"""Every bad input raises OtpInputError (a ValueError) or TypeError; nothing panics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authsvc import otp
from authsvc.errors import AuthsvcError, OtpInputError

K = b"12345678901234567890"
FULLWIDTH_CODE = "\uff11\uff12\uff13\uff14\uff15\uff16"  # "123456" in full-width digits

BAD_VALUES: list[tuple[str, Callable[[], object], str]] = [
    ("digits 5", lambda: otp.generate_code(5), "digits"),
    ("digits 11", lambda: otp.generate_code(11), "digits"),
    ("digits huge", lambda: otp.generate_code(2**80), "out of range"),
    ("batch digits", lambda: otp.generate_codes(10, 4), "digits"),
    ("batch n < 0", lambda: otp.generate_codes(-1), "n must be"),
    ("hotp digits", lambda: otp.hotp(K, 0, digits=12), "digits"),
    ("totp digits", lambda: otp.totp(K, 0.0, digits=0), "digits"),
    ("verify digits", lambda: otp.verify_totp(K, "123456", 0.0, digits=-6), "digits"),
    ("hotp empty secret", lambda: otp.hotp(b"", 0), "secret"),
    ("totp empty secret", lambda: otp.totp(b"", 0.0), "secret"),
    ("verify empty secret", lambda: otp.verify_totp(b"", "123456", 0.0), "secret"),
    ("hasher empty key", lambda: otp.CodeHasher(b""), "secret"),
    ("hotp algorithm", lambda: otp.hotp(K, 0, algorithm="md5"), "algorithm"),
    ("totp algorithm", lambda: otp.totp(K, 0.0, algorithm="SHA-1"), "algorithm"),
    ("verify algorithm", lambda: otp.verify_totp(K, "1", 0.0, algorithm=""), "algorithm"),
    ("negative counter", lambda: otp.hotp(K, -1), "counter"),
    ("counter >= 2**64", lambda: otp.hotp(K, 2**64), "counter"),
    ("counter << 0", lambda: otp.hotp(K, -(2**200)), "counter"),
    ("cost 0", lambda: otp.RateLimiter(1.0, 1).check("k", 0, now=0.0), "cost"),
    ("verify non-ascii", lambda: otp.verify_totp(K, "12345\u0663", 0.0), "ASCII"),
    (
        "hasher non-ascii",
        lambda: otp.CodeHasher(K).digest(FULLWIDTH_CODE, b""),
        "ASCII",
    ),
    ("hasher verify non-ascii", lambda: otp.CodeHasher(K).verify("é", b"", b""), "ASCII"),
    ("time nan", lambda: otp.totp(K, math.nan), "time"),
    ("time inf", lambda: otp.verify_totp(K, "123456", math.inf), "time"),
    ("time before t0", lambda: otp.totp(K, 10.0, t0=20), "t0"),
    ("negative time", lambda: otp.totp(K, -1.0), "time"),
    ("time huge", lambda: otp.totp(K, 1e300), "time"),
    ("step 0", lambda: otp.totp(K, 0.0, step=0), "step"),
    ("window -1", lambda: otp.verify_totp(K, "123456", 0.0, window=-1), "window"),
    ("window 11", lambda: otp.verify_totp(K, "123456", 0.0, window=11), "window"),
    ("token 0 bytes", lambda: otp.random_token(0), "nbytes"),
    ("token 1025 bytes", lambda: otp.random_token(1025), "nbytes"),
]


@pytest.mark.parametrize(
    ("call", "match"), [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES]
)
def test_bad_value_raises_otp_input_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(OtpInputError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AuthsvcError)


BAD_TYPES: list[tuple[str, Callable[[], object]]] = [
    ("digits bool", lambda: otp.generate_code(True)),  # bool is an int to mypy
    ("digits float", lambda: otp.generate_code(6.0)),  # type: ignore[arg-type]
    ("n bool", lambda: otp.generate_codes(True)),  # bool is an int to mypy
    ("counter bool", lambda: otp.hotp(K, False)),
    ("counter str", lambda: otp.hotp(K, "1")),  # type: ignore[arg-type]
    ("secret str", lambda: otp.hotp("key", 1)),  # type: ignore[arg-type]
    ("at bool", lambda: otp.totp(K, True)),
    ("at str", lambda: otp.totp(K, "59")),  # type: ignore[arg-type]
    ("window bool", lambda: otp.verify_totp(K, "1", 0.0, window=True)),
    ("code bytes", lambda: otp.verify_totp(K, b"123456", 0.0)),  # type: ignore[arg-type]
    ("positional keyword", lambda: otp.hotp(K, 1, 8)),  # type: ignore[call-arg]
    ("cost bool", lambda: otp.RateLimiter(1.0, 1).check("k", True, now=0.0)),
    ("now bool", lambda: otp.RateLimiter(1.0, 1).check("k", now=True)),
    ("key bytes", lambda: otp.RateLimiter(1.0, 1).check(b"k")),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("call", [b[1] for b in BAD_TYPES], ids=[b[0] for b in BAD_TYPES])
def test_bad_type_raises_type_error(call: Callable[[], object]) -> None:
    with pytest.raises(TypeError):
        call()


def test_constants_match_the_core() -> None:
    assert otp.ALGORITHMS == ("sha1", "sha256", "sha512")
    for digits in (otp.MIN_DIGITS - 1, otp.MAX_DIGITS + 1):
        with pytest.raises(OtpInputError):
            otp.generate_code(digits)


def test_limits_that_are_valid() -> None:
    assert otp.hotp(K, 2**64 - 1)
    assert otp.totp(K, 0.0) == otp.hotp(K, 0)
    assert otp.verify_totp(K, otp.hotp(K, 0), 0.0, window=10) == 0
    assert otp.random_token(1024)


ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(
    args=st.lists(ANY, max_size=4),
    kwargs=st.dictionaries(
        st.sampled_from(
            [
                "digits",
                "algorithm",
                "window",
                "step",
                "t0",
                "last_used_step",
                "cost",
                "now",
                "max_keys",
            ]
        ),
        ANY,
        max_size=3,
    ),
    which=st.integers(min_value=0, max_value=10),
)
def test_garbage_never_panics(args: list[Any], kwargs: dict[str, Any], which: int) -> None:
    """Any arguments at all: a result, TypeError or OtpInputError, never a PanicException."""
    limiter = otp.RateLimiter(1.0, 2, max_keys=4)
    hasher = otp.CodeHasher(K)
    targets: list[Callable[..., object]] = [
        otp.generate_code,
        otp.generate_codes,
        otp.hotp,
        otp.totp,
        otp.verify_totp,
        otp.constant_time_eq,
        otp.random_token,
        otp.token_digest,
        limiter.check,
        hasher.digest,
        otp.RateLimiter,
    ]
    target = targets[which]
    with contextlib.suppress(TypeError, OtpInputError, UnicodeEncodeError):
        target(*args, **kwargs)


@settings(max_examples=300, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=8),
    at=st.floats(allow_nan=True, allow_infinity=True),
    step=st.integers(min_value=-(2**70), max_value=2**70),
    t0=st.integers(min_value=-(2**70), max_value=2**70),
    window=st.integers(min_value=-3, max_value=12),
    last=st.none() | st.integers(min_value=-(2**70), max_value=2**70),
)
def test_extreme_numbers_never_panic(
    secret: bytes, at: float, step: int, t0: int, window: int, last: int | None
) -> None:
    try:
        otp.verify_totp(secret, "123456", at, step=step, t0=t0, window=window, last_used_step=last)
        otp.totp(secret, at, step=step, t0=t0)
    except OtpInputError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(allow_nan=True, allow_infinity=True),
    burst=st.integers(min_value=-5, max_value=2**70),
    cost=st.integers(min_value=-5, max_value=2**70),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_limiter_extremes_never_panic(rate: float, burst: int, cost: int, now: float) -> None:
    try:
        limiter = otp.RateLimiter(rate, burst, max_keys=2)
    except OtpInputError:
        return
    for _ in range(3):
        try:
            d = limiter.check("k", cost, now=now)
        except OtpInputError:
            return
        assert d.retry_after >= 0.0 and d.remaining >= 0

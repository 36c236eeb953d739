"""Differential tests: authsvc.otp against pyotp on random inputs (Hypothesis)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyotp.exceptions import OTPVerificationError

from authsvc import otp

DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}

# pyotp refuses secrets under 112 bits.
secrets_ = st.binary(min_size=14, max_size=100)
algorithms = st.sampled_from(sorted(DIGESTS))
digits_ = st.integers(min_value=6, max_value=10)
steps = st.sampled_from([15, 30, 60, 90])
# Times far enough after the epoch that every window step exists (pyotp refuses negative steps).
times = st.floats(min_value=10_000, max_value=2.0**35, allow_nan=False)

SETTINGS = settings(max_examples=300, deadline=None)


def b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode("ascii")


@SETTINGS
@given(
    secret=secrets_,
    counter=st.integers(min_value=0, max_value=2**64 - 1),
    digits=digits_,
    algorithm=algorithms,
)
def test_hotp_matches_pyotp(secret: bytes, counter: int, digits: int, algorithm: str) -> None:
    reference = pyotp.HOTP(b32(secret), digits=digits, digest=DIGESTS[algorithm])
    assert otp.hotp(secret, counter, digits=digits, algorithm=algorithm) == reference.at(counter)


@SETTINGS
@given(secret=secrets_, at=times, step=steps, digits=digits_, algorithm=algorithms)
def test_totp_matches_pyotp(
    secret: bytes, at: float, step: int, digits: int, algorithm: str
) -> None:
    reference = pyotp.TOTP(b32(secret), digits=digits, digest=DIGESTS[algorithm], interval=step)
    got = otp.totp(secret, at, step=step, digits=digits, algorithm=algorithm)
    assert got == reference.at(at)


@SETTINGS
@given(
    secret=secrets_,
    at=times,
    step=steps,
    digits=digits_,
    algorithm=algorithms,
    window=st.integers(min_value=0, max_value=4),
    # The code presented: the true code `offset` steps away, or an arbitrary string of digits.
    offset=st.integers(min_value=-6, max_value=6),
    arbitrary=st.none() | st.text(alphabet="0123456789", min_size=0, max_size=11),
)
def test_verify_totp_matches_pyotp(
    secret: bytes,
    at: float,
    step: int,
    digits: int,
    algorithm: str,
    window: int,
    offset: int,
    arbitrary: str | None,
) -> None:
    reference = pyotp.TOTP(b32(secret), digits=digits, digest=DIGESTS[algorithm], interval=step)
    code = reference.at(at, counter_offset=offset) if arbitrary is None else arbitrary
    try:
        expected: int | None = reference.verify_and_get_timecode(
            code, for_time=at, valid_window=window
        )
    except OTPVerificationError:
        expected = None
    kwargs = {"window": window, "step": step, "digits": digits, "algorithm": algorithm}
    got = otp.verify_totp(secret, code, at, **kwargs)  # type: ignore[arg-type]
    assert (got is None) == (expected is None)
    assert reference.verify(code, for_time=at, valid_window=window) == (got is not None)
    if got is not None and expected is not None:
        # pyotp returns the first matching step, otp_core the last (they differ only when two
        # steps of the window share a code); either way the returned step really matches.
        assert got >= expected
        assert reference.generate_otp(got) == code
        if arbitrary is None and abs(offset) <= window:
            assert got >= int(at) // step + offset
        # Replay refusal: with that step recorded as used, only a later matching step could win.
        again = otp.verify_totp(secret, code, at, last_used_step=got, **kwargs)  # type: ignore[arg-type]
        assert again is None


@SETTINGS
@given(
    key=st.binary(min_size=1, max_size=80),
    code=st.text(alphabet=st.characters(max_codepoint=127), max_size=12),
    context=st.binary(max_size=64),
)
def test_code_hasher_is_framed_hmac_sha256(key: bytes, code: str, context: bytes) -> None:
    hasher = otp.CodeHasher(key)
    message = len(context).to_bytes(8, "big") + context + code.encode("ascii")
    expected = hmac.new(key, message, hashlib.sha256).digest()
    assert hasher.digest(code, context) == expected
    assert hasher.verify(code, context, expected)
    tampered = bytes([expected[0] ^ 1]) + expected[1:]
    assert not hasher.verify(code, context, tampered)
    assert not hasher.verify(code, context, expected[:-1])


@SETTINGS
@given(a=st.binary(max_size=64), b=st.binary(max_size=64))
def test_constant_time_eq_is_equality(a: bytes, b: bytes) -> None:
    assert otp.constant_time_eq(a, b) == (a == b)
    assert otp.constant_time_eq(a, a)


@SETTINGS
@given(token=st.text(max_size=64))
def test_token_digest_is_sha256(token: str) -> None:
    assert otp.token_digest(token) == hashlib.sha256(token.encode("utf-8")).digest()


@pytest.mark.parametrize("nbytes", [1, 2, 3, 16, 32, 33, 1024])
def test_random_token_shape(nbytes: int) -> None:
    token = otp.random_token(nbytes)
    assert "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    padded = token + "=" * (-len(token) % 4)
    assert len(base64.urlsafe_b64decode(padded)) == nbytes
    if nbytes >= 16:
        assert len({otp.random_token(nbytes) for _ in range(100)}) == 100

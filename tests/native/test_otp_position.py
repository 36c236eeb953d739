"""A code's comparison cannot show where its first wrong digit is.

`CodeHasher.verify` hashes the candidate (HMAC-SHA-256 keyed, with the challenge as context)
and compares that whole digest with the stored one in constant time (`subtle`, Rust unit tests
in otp_core/src/ct.rs): what is compared never holds the candidate's digits, so a wrong first
digit and a wrong last digit go through the very same work. Asserted here without a clock: verify
is exactly "digest the candidate, compare whole digests", for codes wrong at any position. The
timing itself is measured, and reported, by bench/otp_core.py.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from authsvc.otp import CodeHasher

HASHER = CodeHasher(b"k" * 32)
CONTEXT = b"challenge"
codes = st.text(alphabet="0123456789", min_size=6, max_size=6)


@given(code=codes, position=st.integers(0, 5), shift=st.integers(1, 9))
def test_verify_is_a_comparison_of_whole_digests(code: str, position: int, shift: int) -> None:
    stored = HASHER.digest(code, CONTEXT)
    wrong = code[:position] + str((int(code[position]) + shift) % 10) + code[position + 1 :]
    assert HASHER.verify(code, CONTEXT, stored)
    assert not HASHER.verify(wrong, CONTEXT, stored)
    # The candidate's digest is what gets compared: a stored value equal to the wrong code's
    # digest matches it, whichever digit differs (nothing compares the digits themselves).
    assert HASHER.verify(wrong, CONTEXT, HASHER.digest(wrong, CONTEXT))


@given(code=codes, position=st.integers(0, 5))
def test_digests_of_codes_one_digit_apart_share_no_structure(code: str, position: int) -> None:
    wrong = code[:position] + str((int(code[position]) + 1) % 10) + code[position + 1 :]
    mine, theirs = HASHER.digest(code, CONTEXT), HASHER.digest(wrong, CONTEXT)
    assert len(mine) == len(theirs) == 32
    # Keyed hashing spreads a one-digit change over the whole digest: roughly half its bits.
    differing = sum(bin(a ^ b).count("1") for a, b in zip(mine, theirs, strict=True))
    assert 64 <= differing <= 192, differing

"""Sealing at rest: round trip, binding to its row, tamper detection, per-purpose keys."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from authsvc.keys import Keys

KEYS = Keys.derive(os.urandom(32))


@given(st.text(max_size=400), st.binary(min_size=16, max_size=16))
def test_seal_round_trip_and_never_in_clear(text: str, aad: bytes) -> None:
    sealed = KEYS.sealer.seal(text, aad)
    assert KEYS.sealer.open(sealed, aad) == text
    if len(text) >= 4:
        assert text.encode() not in sealed


def test_sealed_value_is_bound_to_its_row() -> None:
    sealed = KEYS.sealer.seal("+33612345678", b"row-1-----------")
    with pytest.raises(InvalidTag):
        KEYS.sealer.open(sealed, b"row-2-----------")


def test_tampering_is_detected() -> None:
    sealed = bytearray(KEYS.sealer.seal("+33612345678", b"aad"))
    sealed[-1] ^= 1
    with pytest.raises(InvalidTag):
        KEYS.sealer.open(bytes(sealed), b"aad")


def test_subkeys_differ_by_purpose_and_master() -> None:
    other = Keys.derive(os.urandom(32))
    digest = KEYS.code_hasher.digest("123456", b"challenge")
    assert KEYS.code_hasher.verify("123456", b"challenge", digest)
    assert not other.code_hasher.verify("123456", b"challenge", digest)
    assert not KEYS.code_hasher.verify("123456", b"another challenge", digest)
    assert KEYS.lookup_digest("+33612345678") != other.lookup_digest("+33612345678")
    assert KEYS.lookup_key not in (digest,)

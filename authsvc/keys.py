"""Keys derived from the master secret, and the sealing of secrets kept at rest.

One master secret, one HKDF subkey per purpose, so that a key used to hash codes is never the key
that encrypts phone numbers. Phone numbers and queued message texts (which hold a code until
delivery) are sealed with AES-256-GCM; what must be looked up (a number, for per-number limits)
is a keyed digest instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from authsvc.otp import CodeHasher

_NONCE_BYTES = 12
_VERSION = b"\x01"  # first byte of every sealed value, so the format can change later


def _subkey(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        master
    )


class Sealer:
    """AES-256-GCM with a random nonce; `aad` binds a ciphertext to its row and column."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), aad)

    def open(self, sealed: bytes, aad: bytes) -> str:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed-value version")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        return self._aead.decrypt(nonce, body, aad).decode()


@dataclass(frozen=True)
class Keys:
    """Every derived key the service uses, made once at start-up."""

    code_hasher: CodeHasher
    sealer: Sealer
    lookup_key: bytes
    binding_key: bytes
    receipt_key: bytes

    @classmethod
    def derive(cls, master: bytes) -> Keys:
        return cls(
            code_hasher=CodeHasher(_subkey(master, "authsvc/v1 code digest")),
            sealer=Sealer(_subkey(master, "authsvc/v1 seal")),
            lookup_key=_subkey(master, "authsvc/v1 lookup digest"),
            binding_key=_subkey(master, "authsvc/v1 grant binding"),
            receipt_key=_subkey(master, "authsvc/v1 receipt token"),
        )

    def lookup_digest(self, value: str) -> bytes:
        """A keyed digest of a value that must be found again but not kept (a phone number)."""
        return hmac.new(self.lookup_key, value.encode(), hashlib.sha256).digest()

    def binding_digest(self, canonical: str) -> bytes:
        """What an action grant is bound to: a keyed digest of the exact values it allows."""
        return hmac.new(self.binding_key, canonical.encode(), hashlib.sha256).digest()

    def receipt_token(self, message_id: bytes) -> str:
        """What a receipt URL we hand a gateway (Kannel's dlr-url) carries besides the message
        id, so that nobody else can write a receipt for it."""
        return hmac.new(self.receipt_key, message_id, hashlib.sha256).hexdigest()

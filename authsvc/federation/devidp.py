"""A development issuer: a key pair, its JWKS, and assertions minted with it.

For local runs, tests and load tests only; production refuses this issuer unless it is allowed
explicitly (AUTHSVC_FEDERATION_ALLOW_DEV_ISSUER).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from authsvc.config import DEV_ISSUER

PRIVATE_KEY = "dev-idp-key.pem"
JWKS = "dev-idp-jwks.json"


def keygen(directory: Path) -> tuple[Path, Path]:
    """A new ES256 key; the JWKS keeps the previous keys too, so rotation needs no downtime."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    kid = secrets.token_hex(8)
    private = directory / PRIVATE_KEY
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    (directory / "dev-idp-kid").write_text(kid)
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
    jwks_path = directory / JWKS
    previous = json.loads(jwks_path.read_text())["keys"] if jwks_path.exists() else []
    jwks_path.write_text(json.dumps({"keys": [jwk, *previous[:2]]}, indent=2))
    return private, jwks_path


def mint(
    directory: Path,
    *,
    subject: str,
    siret: str,
    ttl_s: int = 120,
    audience: str = "authsvc",
    issuer: str = DEV_ISSUER,
    now: float | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    key = serialization.load_pem_private_key((directory / PRIVATE_KEY).read_bytes(), None)
    return jwt.encode(
        {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "siret": siret,
            "iat": issued,
            "exp": issued + ttl_s,
            "jti": secrets.token_urlsafe(16),
        },
        key,  # type: ignore[arg-type]
        algorithm="ES256",
        headers={"kid": (directory / "dev-idp-kid").read_text()},
    )

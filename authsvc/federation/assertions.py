"""Verifying a federated assertion: a compact JWS from a trusted issuer, for this service.

PyJWT checks the signature with the issuer's key, the audience and the presence of the claims;
times are checked here against the service's clock (with a small skew allowance) so that each
cause of refusal has its own reason and tests can drive time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from authsvc import validation
from authsvc.app import App
from authsvc.config import TrustedIssuer
from authsvc.db import UsedAssertion
from authsvc.errors import Failure
from authsvc.federation.failures import refused
from authsvc.federation.keysets import KeySet

MAX_ASSERTION_BYTES = 8 * 1024
MAX_LIFETIME_S = 300
ACCEPTED = frozenset({"RS256", "ES256", "EdDSA"})
REQUIRED = ("iss", "aud", "sub", "iat", "exp", "jti")


@dataclass(frozen=True)
class Claims:
    issuer: str
    subject: str
    siret: str
    jti: str
    expires_at: datetime


def _instant(value: float, name: str) -> datetime:
    """A NumericDate as a datetime; NaN, infinities and years past 9999 are malformed, not a
    crash (a validly signed assertion may still carry them)."""
    if not math.isfinite(value) or not 0 <= value < _LAST_INSTANT:
        raise refused("ASSERTION_MALFORMED", f"{name} is not a date", claim=name)
    return datetime.fromtimestamp(value, UTC)


_LAST_INSTANT = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


class AssertionVerifier:
    def __init__(self, app: App) -> None:
        self._app = app
        self._issuers: dict[str, tuple[TrustedIssuer, KeySet]] = {
            trusted.issuer: (
                trusted,
                KeySet(trusted, app.settings.federation_jwks_min_refresh_s),
            )
            for trusted in app.settings.federation_issuers
        }

    def knows(self, issuer: str) -> bool:
        return issuer in self._issuers

    async def verify(self, token: str) -> Claims:
        """The assertion's claims, or a Failure naming exactly what is wrong."""
        if len(token) > MAX_ASSERTION_BYTES:
            raise refused(
                "ASSERTION_TOO_LARGE", f"an assertion has at most {MAX_ASSERTION_BYTES} bytes"
            )
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:  # DecodeError, and odd headers ("kid": 123, "crit")
            raise refused("ASSERTION_MALFORMED", "not a compact JWS") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):  # a list or an object is not hashable: no crash
            raise refused("ASSERTION_MALFORMED", "the header's alg must be a string")
        if any(not isinstance(header.get(name, ""), str) for name in ("kid", "typ", "cty")):
            raise refused("ASSERTION_MALFORMED", "the header's kid, typ and cty are strings")
        if algorithm not in ACCEPTED:
            raise refused("ASSERTION_ALGORITHM_REFUSED", "only RS256, ES256 and EdDSA are accepted")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise refused("ASSERTION_CLAIM_MISSING", "the issuer is missing", claim="iss")
        if issuer not in self._issuers:
            raise refused("ASSERTION_ISSUER_UNKNOWN", "this issuer is not trusted")
        trusted, keys = self._issuers[issuer]
        if algorithm not in trusted.algorithms:
            raise refused("ASSERTION_ALGORITHM_REFUSED", "this issuer does not sign with that")
        kid = header.get("kid")
        key = await keys.key_for(kid if isinstance(kid, str) else None)
        settings = self._app.settings
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=settings.federation_client_id,
                issuer=issuer,
                options={
                    "require": list(REQUIRED),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.MissingRequiredClaimError as error:
            raise refused(
                "ASSERTION_CLAIM_MISSING", "a required claim is missing", claim=error.claim
            ) from None
        except jwt.InvalidAudienceError:
            raise refused("ASSERTION_AUDIENCE_MISMATCH", "not issued for this service") from None
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
            raise refused("ASSERTION_SIGNATURE_INVALID", "the signature does not verify") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            raise refused("ASSERTION_MALFORMED", "the assertion cannot be read") from None
        return self._check(claims, issuer)

    def _check(self, claims: dict[str, object], issuer: str) -> Claims:
        skew = timedelta(seconds=self._app.settings.federation_clock_skew_s)
        now = self._app.clock.now()
        times: dict[str, datetime] = {}
        for name in ("iat", "exp", "nbf"):
            value = claims.get(name)
            if value is None and name == "nbf":
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise refused("ASSERTION_CLAIM_MISSING", f"{name} must be a number", claim=name)
            times[name] = _instant(value, name)
        if times["exp"] + skew <= now:
            raise refused("ASSERTION_EXPIRED", "the assertion has expired")
        if times["iat"] - skew > now or times.get("nbf", times["iat"]) - skew > now:
            raise refused("ASSERTION_NOT_YET_VALID", "the assertion is not valid yet")
        if (times["exp"] - times["iat"]).total_seconds() > MAX_LIFETIME_S:
            raise refused("ASSERTION_LIFETIME_TOO_LONG", "an assertion lives at most 5 minutes")
        values: dict[str, str] = {}
        for name in ("sub", "jti", "siret"):
            value = claims.get(name)
            if not isinstance(value, str) or not value or len(value) > 256:
                raise refused("ASSERTION_CLAIM_MISSING", f"{name} is missing", claim=name)
            if validation.has_control_characters(value):
                # Signed or not, a NUL must never reach the database (PostgreSQL refuses it).
                raise refused(
                    "ASSERTION_MALFORMED", f"{name} holds a control character", claim=name
                )
            values[name] = value
        try:
            validation.siret(values["siret"], "siret")
        except Failure:
            raise refused(
                "ASSERTION_CLAIM_MISSING", "siret is not a valid SIRET", claim="siret"
            ) from None
        return Claims(issuer, values["sub"], values["siret"], values["jti"], times["exp"] + skew)

    async def consume(self, claims: Claims) -> None:
        """Record the jti; a second use anywhere fails on the primary key."""
        app = self._app
        try:
            async with app.write() as db:
                db.add(
                    UsedAssertion(
                        issuer=claims.issuer, jti=claims.jti, expires_at=claims.expires_at
                    )
                )
        except IntegrityError:
            raise refused("ASSERTION_REPLAYED", "this assertion was already used") from None
        if random.random() < 0.01:  # noqa: S311 (housekeeping, not security)
            async with app.write() as db:
                await db.execute(
                    delete(UsedAssertion).where(UsedAssertion.expires_at < app.clock.now())
                )

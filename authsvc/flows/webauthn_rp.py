"""The relying party's side of WebAuthn, over the `webauthn` library (py_webauthn): the
options a ceremony starts with, the checks of the browser's answers, and the counter rule.

Everything the library decides (signatures, challenge, origin, rp id hash, flags, attestation
format) stays its; this module fixes the service's choices: user verification REQUIRED in
both ceremonies, attestation "none" (the service trusts no vendor list: a passkey is bound to
its holder by the step-up that enrols it), the settings' rp id and origins. A browser's answer
that is not a PublicKeyCredential's JSON is an INVALID_ARGUMENT (`Malformed`); one that is well
formed but does not verify is `Rejected` (a wrong answer, counted by the caller).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import InvalidJSONStructure, WebAuthnException
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from authsvc.config import Settings
from authsvc.errors import Failure

# A browser's PublicKeyCredential JSON is a few hundred bytes to a few KiB (an attestation
# with certificates); more is not an answer.
MAX_JSON = 16 * 1024


class Malformed(Exception):
    """Not a PublicKeyCredential's JSON: the request is invalid, nothing is counted."""


class Rejected(Exception):
    """Well formed, but it does not verify (the library's message says why; not for the
    end user, and never holding a secret: it names fields, not values)."""


@dataclass(frozen=True)
class Options:
    challenge: bytes
    json: str


@dataclass(frozen=True)
class NewCredential:
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: str


def require_configured(settings: Settings) -> None:
    """Passkeys are off until the origins they may be used on are configured."""
    if not settings.webauthn_origins:
        raise Failure(
            "UNIMPLEMENTED",
            "NOT_IMPLEMENTED",
            "passkeys are not configured on this server (AUTHSVC_WEBAUTHN_ORIGINS)",
        )


def _known_transports(names: list[str]) -> list[AuthenticatorTransport]:
    known = {transport.value for transport in AuthenticatorTransport}
    return [AuthenticatorTransport(name) for name in names if name in known]


def registration_options(
    settings: Settings,
    *,
    user_id: bytes,
    user_name: str,
    exclude: list[bytes],
    timeout_s: int,
) -> Options:
    options = generate_registration_options(
        rp_id=settings.webauthn_rp_id,
        rp_name=settings.webauthn_rp_name,
        user_id=user_id,
        user_name=user_name,
        timeout=timeout_s * 1000,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=one) for one in exclude],
    )
    return Options(options.challenge, options_to_json(options))


def assertion_options(
    settings: Settings, *, allow: list[tuple[bytes, str]], timeout_s: int
) -> Options:
    """`allow`: the account's credentials, (credential id, comma-separated transports)."""
    options = generate_authentication_options(
        rp_id=settings.webauthn_rp_id,
        timeout=timeout_s * 1000,
        allow_credentials=[
            PublicKeyCredentialDescriptor(
                id=credential_id,
                transports=_known_transports(transports.split(",")) or None,
            )
            for credential_id, transports in allow
        ],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return Options(options.challenge, options_to_json(options))


def _json_object(text: str) -> dict[str, object]:
    if not text or len(text) > MAX_JSON:
        raise Malformed(f"1 to {MAX_JSON} characters of JSON")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # nesting deeper than the interpreter's stack
        raise Malformed("not JSON") from None
    if not isinstance(value, dict):
        raise Malformed("not a JSON object")
    return value


# What the library's parsers raise on JSON of the wrong shape: their own exception, and the
# base64url decoder's on a field that is not (binascii.Error and the non-ASCII str's
# UnicodeEncodeError are ValueErrors; a non-str field a TypeError). A parser never sees a
# secret: the messages are the library's, about the structure.
_UNPARSABLE = (WebAuthnException, ValueError, TypeError, KeyError, RecursionError)


def parse_registration(text: str) -> RegistrationCredential:
    try:
        return parse_registration_credential_json(_json_object(text))
    except _UNPARSABLE as error:  # InvalidJSONStructure, undecodable base64url
        raise Malformed(_structure(error)) from None


def parse_assertion(text: str) -> AuthenticationCredential:
    try:
        return parse_authentication_credential_json(_json_object(text))
    except _UNPARSABLE as error:
        raise Malformed(_structure(error)) from None


def _structure(error: Exception) -> str:
    """The answer's message: the library's own words for its exception, the kind of the
    decoders' (their messages may quote the bytes they choked on)."""
    if isinstance(error, WebAuthnException):
        return str(error)
    return f"a field is not of the expected form ({type(error).__name__})"


# What the library may raise on a well-formed answer it cannot verify: its own exceptions,
# and the decoders' errors on bytes that are not CBOR, COSE or DER.
_UNVERIFIABLE = (WebAuthnException, ValueError, TypeError, KeyError, IndexError)


def check_registration(
    settings: Settings, credential: RegistrationCredential, challenge: bytes
) -> NewCredential:
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origins,
            require_user_verification=True,
        )
    except InvalidJSONStructure as error:
        raise Malformed(str(error)) from None
    except _UNVERIFIABLE as error:
        raise Rejected(str(error)) from None
    transports = credential.response.transports or []
    return NewCredential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=",".join(transport.value for transport in transports)[:128],
    )


def check_assertion(
    settings: Settings,
    credential: AuthenticationCredential,
    challenge: bytes,
    public_key: bytes,
) -> int:
    """The assertion's signature counter, once everything else verified. The counter itself
    is not judged here (0 is passed as the stored one): `counter_moves_forward` decides, and
    the conditional UPDATE that stores it decides again under concurrency."""
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origins,
            credential_public_key=public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except InvalidJSONStructure as error:
        raise Malformed(str(error)) from None
    except _UNVERIFIABLE as error:
        raise Rejected(str(error)) from None
    return verified.new_sign_count


def counter_moves_forward(stored: int, new: int) -> bool:
    """WebAuthn's clone signal (§6.1.1): a counter that does not grow, unless both are 0 (an
    authenticator that keeps no counter). The same rule as passkeys.CLAIM_COUNTER's WHERE."""
    return new > stored or (new == 0 and stored == 0)

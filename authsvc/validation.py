"""Format checks shared by the API and the command line. Each raises an INVALID_FIELD Failure."""

from __future__ import annotations

import re
import uuid
from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from authsvc.errors import invalid_field
from authsvc.policies import networks

_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_EMAIL = re.compile(
    r"[\x21-\x3f\x41-\x7e]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes, URL-safe base64 without padding
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,128}")
# La Poste's establishments are the one exception to the SIRET Luhn rule (INSEE).
_LA_POSTE_SIREN = "356000000"

# C0 and C1 control characters, NUL and DEL included (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The largest value of a signed 64-bit column (BIGINT): integers carried as text stay below it.
MAX_INT64 = 2**63 - 1

MAX_PASSWORD = 128
MAX_USER_AGENT = 512
MAX_NAME = 200


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def siret(value: str, field: str = "organization_siret") -> str:
    if not (len(value) == 14 and value.isascii() and value.isdigit()):
        raise invalid_field(field, "a SIRET has exactly 14 digits")
    if value.startswith(_LA_POSTE_SIREN):
        valid = sum(int(c) for c in value) % 5 == 0
    else:
        valid = _luhn_ok(value)
    if not valid:
        raise invalid_field(field, "this SIRET fails its check digit")
    return value


def login(value: str, field: str = "login") -> str:
    if not _LOGIN.fullmatch(value):
        raise invalid_field(field, "a login has 1 to 64 characters: letters, digits, . _ @ -")
    return value


def password(value: str, field: str = "password") -> str:
    if not value or len(value) > MAX_PASSWORD:
        raise invalid_field(field, f"a password has 1 to {MAX_PASSWORD} characters")
    return value


def email(value: str, field: str = "email") -> str:
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise invalid_field(field, "not a valid email address")
    return value


def name(value: str, field: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_NAME or not value.isprintable():
        raise invalid_field(field, f"1 to {MAX_NAME} printable characters")
    return value


def _id36(value: str, field: str, what: str) -> uuid.UUID:
    """An id in its 36-character form only (uuid.UUID takes other spellings)."""
    try:
        parsed = uuid.UUID(value) if len(value) == 36 else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise invalid_field(field, f"not a {what} id")
    return parsed


def flow_id(value: str, field: str = "flow_id") -> uuid.UUID:
    return _id36(value, field, "flow")


def factor_id(value: str, field: str = "factor_id") -> uuid.UUID:
    """A second factor's id (a passkey's or an app's)."""
    return _id36(value, field, "factor")


def token(value: str, field: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise invalid_field(field, "not a token issued by this service")
    return value


def optional_token(value: str, field: str) -> str | None:
    return token(value, field) if value else None


def code(value: str, *digits: int, field: str = "code") -> str:
    """A code of one of the lengths `digits` (a sent code's, an authenticator app's)."""
    if not (len(value) in digits and value.isascii() and value.isdigit()):
        lengths = " or ".join(str(length) for length in sorted(set(digits)))
        raise invalid_field(field, f"a code has exactly {lengths} digits")
    return value


def idempotency_key(value: str, field: str = "idempotency_key") -> str | None:
    if not value:
        return None
    if not _PRINTABLE.fullmatch(value):
        raise invalid_field(field, "1 to 128 printable ASCII characters")
    return value


def ip_address(value: str, field: str = "client.ip_address") -> str:
    if not value:
        return ""
    # An IPv6 zone id ("fe80::1%eth0") names an interface of the caller's own host: meaningless
    # for an end user's address, and `ipaddress` accepts any text there.
    if "%" in value or len(value) > 45:
        raise invalid_field(field, "not an IPv4 or IPv6 address")
    try:
        # `::ffff:198.51.100.9` is 198.51.100.9: one form in audit rows and in the limiter.
        return networks.canonical(value)
    except ValueError:
        raise invalid_field(field, "not an IPv4 or IPv6 address") from None


def user_agent(value: str, field: str = "client.user_agent") -> str:
    if len(value) > MAX_USER_AGENT or not value.isprintable():
        raise invalid_field(field, f"at most {MAX_USER_AGENT} printable characters")
    return value


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def no_control_characters(message: Message, prefix: str = "") -> None:
    """Refuse a control character (NUL included) in any string field of a request, nested,
    repeated and map fields too: no field of the API carries one, and PostgreSQL refuses a NUL
    in text. Checked once for every RPC, before its handler, so no handler has to remember it.
    """
    strings, messages, maps = _plan(cast(Descriptor, message.DESCRIPTOR))
    for name, repeated in strings:
        value = getattr(message, name)
        if value and (
            any(_CONTROL.search(text) for text in value) if repeated else _CONTROL.search(value)
        ):
            raise invalid_field(prefix + name, "control characters are not allowed")
    for name, repeated in messages:
        if repeated:
            for inner in getattr(message, name):
                no_control_characters(inner, f"{prefix}{name}.")
        elif message.HasField(name):
            no_control_characters(getattr(message, name), f"{prefix}{name}.")
    for name, string_keys, values in maps:
        for key, value in getattr(message, name).items():
            if string_keys and _CONTROL.search(key):
                raise invalid_field(prefix + name, "control characters are not allowed")
            if values == "string" and _CONTROL.search(value):
                raise invalid_field(f"{prefix}{name}", "control characters are not allowed")
            if values == "message":
                no_control_characters(value, f"{prefix}{name}.")


# Per message type: (string fields, message fields, map fields), each field with how to read it.
_Plan = tuple[
    tuple[tuple[str, bool], ...],
    tuple[tuple[str, bool], ...],
    tuple[tuple[str, bool, str], ...],
]
_plans: dict[Descriptor, _Plan] = {}


def _plan(descriptor: Descriptor) -> _Plan:
    """Which fields of a message type hold text, worked out once per type (walking the
    descriptor on every call cost more than the check itself)."""
    found = _plans.get(descriptor)
    if found is not None:
        return found
    strings, messages, maps = [], [], []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            strings.append((field.name, field.is_repeated))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
                kind = {
                    FieldDescriptor.TYPE_STRING: "string",
                    FieldDescriptor.TYPE_MESSAGE: "message",
                }
                maps.append(
                    (
                        field.name,
                        key.type == FieldDescriptor.TYPE_STRING,
                        kind.get(value.type, ""),
                    )
                )
            else:
                messages.append((field.name, field.is_repeated))
    found = _plans[descriptor] = (tuple(strings), tuple(messages), tuple(maps))
    return found


def int64_text(value: str, field: str) -> int:
    """A non-negative decimal integer given as text that fits a BIGINT (below 2^63)."""
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > MAX_INT64:
        raise invalid_field(field, f"a decimal integer from 0 to {MAX_INT64}")
    return int(value)

"""Phone numbers: parse, classify (mobile → SMS, landline → voice) and mask, with phonenumbers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from authsvc.errors import invalid_field


class PhoneKind(StrEnum):
    MOBILE = "mobile"
    LANDLINE = "landline"


# Which channels each kind of line can take; the first is the default.
CHANNELS_BY_KIND: dict[PhoneKind, tuple[str, ...]] = {
    PhoneKind.MOBILE: ("sms", "voice"),
    PhoneKind.LANDLINE: ("voice",),
}

_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
# Lines that answer a voice call but cannot be trusted to receive an SMS.
_LANDLINE_TYPES = {
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.VOIP,
    PhoneNumberType.UAN,
    PhoneNumberType.PERSONAL_NUMBER,
}

_MAX_INPUT = 32


@dataclass(frozen=True)
class Phone:
    e164: str
    kind: PhoneKind
    region: str

    @property
    def masked(self) -> str:
        return mask_e164(self.e164)


def parse_phone(text: str, *, field: str = "phone", default_region: str = "FR") -> Phone:
    """Parse and classify a number; anything that is not a valid mobile or landline is refused."""
    if not text or len(text) > _MAX_INPUT:
        raise invalid_field(field, "a phone number is required (E.164, e.g. +33612345678)")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise invalid_field(field, "not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise invalid_field(field, "not a valid phone number")
    number_type = phonenumbers.number_type(number)
    if number_type in _MOBILE_TYPES:
        kind = PhoneKind.MOBILE
    elif number_type in _LANDLINE_TYPES:
        kind = PhoneKind.LANDLINE
    else:
        raise invalid_field(field, "this number can receive neither an SMS nor a voice call")
    region = phonenumbers.region_code_for_number(number) or default_region
    return Phone(phonenumbers.format_number(number, PhoneNumberFormat.E164), kind, region)


def mask_e164(e164: str) -> str:
    """Keep the country code and the last two digits: +33 •••••••78."""
    try:
        number = phonenumbers.parse(e164, None)
        prefix = f"+{number.country_code}"
    except phonenumbers.NumberParseException:
        prefix = e164[:3]
    national = e164[len(prefix) :]
    hidden = max(len(national) - 2, 0)
    return f"{prefix} {'•' * hidden}{national[hidden:]}"


def mask_email(email: str) -> str:
    """j•••@example.fr: first letter of the local part, and the domain."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"

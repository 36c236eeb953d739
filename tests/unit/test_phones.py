"""Phone numbers: classification decides the channel; masks never reveal the number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.errors import Failure
from authsvc.phones import CHANNELS_BY_KIND, PhoneKind, mask_e164, parse_phone


@pytest.mark.parametrize(
    ("text", "e164", "kind", "region"),
    [
        ("+33612345678", "+33612345678", PhoneKind.MOBILE, "FR"),
        ("06 12 34 56 78", "+33612345678", PhoneKind.MOBILE, "FR"),
        ("07 81 23 45 67", "+33781234567", PhoneKind.MOBILE, "FR"),
        ("02 48 12 34 56", "+33248123456", PhoneKind.LANDLINE, "FR"),
        ("+33 1 42 68 53 00", "+33142685300", PhoneKind.LANDLINE, "FR"),
        ("+262 692 12 34 56", "+262692123456", PhoneKind.MOBILE, "RE"),  # La Réunion
        ("+590 590 12 34 56", "+590590123456", PhoneKind.LANDLINE, "GP"),  # Guadeloupe
    ],
)
def test_parse_and_classify(text: str, e164: str, kind: PhoneKind, region: str) -> None:
    phone = parse_phone(text)
    assert (phone.e164, phone.kind, phone.region) == (e164, kind, region)


@pytest.mark.parametrize(
    "text", ["", "12", "+33 6 12", "0800 00 00 00x", "+999123456789", "x" * 40]
)
def test_refused(text: str) -> None:
    with pytest.raises(Failure) as raised:
        parse_phone(text)
    assert raised.value.reason == "INVALID_FIELD" and raised.value.metadata == {"field": "phone"}


def test_premium_rate_numbers_are_refused() -> None:
    with pytest.raises(Failure):
        parse_phone("+33 8 99 23 45 67")  # premium rate: neither SMS nor voice for codes


def test_sms_only_for_mobiles() -> None:
    assert CHANNELS_BY_KIND[PhoneKind.MOBILE] == ("sms", "voice")
    assert CHANNELS_BY_KIND[PhoneKind.LANDLINE] == ("voice",)


@given(st.integers(min_value=600000000, max_value=799999999))
def test_mask_keeps_country_code_and_last_two_digits_only(national: int) -> None:
    e164 = f"+33{national}"
    masked = mask_e164(e164)
    assert masked.startswith("+33 ")
    assert masked.endswith(e164[-2:])
    assert sum(c.isdigit() for c in masked) == 4  # "33" and the last two

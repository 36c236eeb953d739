"""Masking a provider's error with the message's own payload: every format a gateway may give
the destination, every rendering of the code, percent-encoded echoes, bounded excerpts."""

from __future__ import annotations

import pytest

from authsvc.courier import templates
from authsvc.courier.dispatcher import redact
from authsvc.courier.outbox import Payload
from authsvc.courier.providers import DeliveryError
from authsvc.courier.redaction import EXCERPT_CHARS, Redactor

VOICE = templates.code_message(
    "voice", purpose="login", code="482910", minutes=5, service="PEP's", domain="x.example"
)
PHONE = Payload("+33612345678", VOICE.text, secrets=VOICE.secrets)
MAIL = Payload("Alice.Martin@example.fr", "Votre code : 482910", secrets=("482910",))


@pytest.mark.parametrize(
    "said",
    [
        "+33612345678",
        "33612345678",
        "0033612345678",
        "0612345678",
        "612345678",
        "06 12 34 56 78",
        "06.12.34.56.78",
        "+33 6 12 34 56 78",
        "+33 (0)6 12 34 56 78",
        "tel:+33-6-12-34-56-78",
    ],
)
def test_the_destination_in_any_format(said: str) -> None:
    masked = Redactor(PHONE).excerpt(f"invalid destination {said}!")
    assert "12 34" not in masked and "1234" not in masked and "345678" not in masked, masked
    assert masked.startswith("invalid destination"), masked


@pytest.mark.parametrize(
    "said",
    ["482910", "4, 8, 2, 9, 1, 0", "4 8 2 9 1 0", "482 910", "4-8-2-9-1-0", "4,8,2,9,1,0"],
)
def test_the_code_in_any_rendering(said: str) -> None:
    assert Redactor(PHONE).mask(f"text refused: {said}.") == "text refused: ••••."


def test_an_echoed_query_string_is_decoded_then_masked() -> None:
    said = "to=%2B33612345678&text=Votre+code+est+%3A+4%2C+8%2C+2%2C+9%2C+1%2C+0."
    masked = Redactor(PHONE).mask(said)
    assert masked == "to=[number]&text=Votre code est : ••••.", masked


def test_the_whole_text_and_the_address() -> None:
    assert Redactor(PHONE).mask(f"refused: {VOICE.text}") == "refused: [text]"
    masked = Redactor(MAIL).mask("550 <alice.martin@EXAMPLE.fr>: user alice.martin unknown")
    assert masked == "550 <[address]>: user [address] unknown"


def test_a_gateway_body_is_kept_only_as_a_bounded_masked_excerpt() -> None:
    body = '{"error": "bad", "ref": "9876 5432", "token": "abcdefghijklmnopqrst"}\n' + "x" * 999
    error = DeliveryError("http sms: HTTP 400", permanent=True, detail=body)
    stored = redact(error, PHONE)
    assert stored.startswith('http sms: HTTP 400: {"error": "bad", "ref": "••••", "token": "••••"')
    assert len(stored) <= len("http sms: HTTP 400: ") + EXCERPT_CHARS and "\n" not in stored


def test_a_provider_bug_is_masked_too() -> None:
    stored = redact(RuntimeError(f"cannot send {VOICE.text} to 06 12 34 56 78"), PHONE)
    assert stored == "RuntimeError: cannot send [text] to [number]"

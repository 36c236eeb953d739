"""The French texts: one GSM-7 segment per code SMS ending with the WebOTP line, digits read one
by one twice, emails with a plain-text part, nothing of the code in what is kept."""

from __future__ import annotations

import dataclasses
import re

import pytest

from authsvc.courier import gsm, templates
from authsvc.courier.outbox import code_free

COMMON = {"service": "PEP's", "domain": "peps.cnracl.example", "minutes": 5}


@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_code_sms_is_one_gsm7_segment_ending_with_the_webotp_line(purpose: str) -> None:
    text = templates.code_text("sms", purpose=purpose, code="482910", **COMMON)  # type: ignore[arg-type]
    assert gsm.is_gsm7(text) and gsm.segments(text) == 1, (len(text), text)
    assert text.startswith("PEP's : ")
    assert "482910" in text and "5 minutes" in text and "Ne le communiquez jamais" in text
    assert text.splitlines()[-1] == "@peps.cnracl.example #482910"
    assert text.splitlines()[-2] == ""  # WebOTP: the origin-bound line stands alone, last


@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_voice_reads_the_digits_one_by_one_twice(purpose: str) -> None:
    text = templates.code_text("voice", purpose=purpose, code="482910", **COMMON)  # type: ignore[arg-type]
    assert text.count("4, 8, 2, 9, 1, 0") == 2
    assert "482910" not in text and "PEP's" in text and "5 minutes" in text


@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_code_by_email_is_plain_text(purpose: str) -> None:
    text = templates.code_text("email", purpose=purpose, code="482910", **COMMON)  # type: ignore[arg-type]
    assert "482910" in text and "<" not in text and text.startswith("Bonjour")


def test_unknown_channel_or_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="channel"):
        templates.code_text("fax", purpose="login", code="1", **COMMON)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="purpose"):
        templates.code_text("sms", purpose="other", code="1", **COMMON)  # type: ignore[arg-type]


def test_segment_counting() -> None:
    assert gsm.segments("a" * 160) == 1 and gsm.segments("a" * 161) == 2
    assert gsm.segments("a" * 306) == 2 and gsm.segments("a" * 307) == 3
    assert gsm.segments("€" * 80) == 1 and gsm.segments("€" * 81) == 2  # two septets each
    assert gsm.segments("ê" * 70) == 1 and gsm.segments("ê" * 71) == 2  # UCS-2
    assert gsm.segments("ê" + "a" * 134) == 3  # one character outside GSM-7 costs the lot
    assert gsm.is_gsm7("à é è ù ì ò Ç") and not gsm.is_gsm7("ç") and not gsm.is_gsm7("\u2019")


EMAILS = {
    "activation": {"display_name": "Alice", "activation_token": "tok-Z9q8w7e6r5t4y3u2"},
    "contact_changed": {"display_name": "Alice", "what": "numéro de téléphone"},
    "password_changed": {"display_name": "Alice"},
    "new_admin": {"display_name": "Alice", "admin_name": "Bob Martin"},
    "code_failures": {"display_name": "Alice"},
    "federated_link_proposed": {"display_name": "Alice", "admin_name": "Bob Martin"},
    "email_verification": {"display_name": "Alice", "code": "482910", "minutes": "5"},
}


@pytest.mark.parametrize("kind", templates.EMAIL_KINDS)
def test_every_email_has_a_subject_plain_text_and_html(kind: str) -> None:
    mail = templates.email(kind, service="PEP's", **EMAILS[kind])
    assert mail.subject.startswith("PEP's : ") and "\n" not in mail.subject
    assert mail.text.startswith("Bonjour Alice,") and "<" not in mail.text
    assert mail.html is not None and "Bonjour Alice," in mail.html
    for value in EMAILS[kind].values():
        if value != "5":
            assert value in mail.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        mail.subject = "x"  # type: ignore[misc]


def test_email_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="missing"):
        templates.email("new_admin", display_name="A", service="S")
    with pytest.raises(ValueError, match="unexpected"):
        templates.email("password_changed", display_name="A", service="S", extra="x")
    with pytest.raises(ValueError, match="kind"):
        templates.email("birthday", service="S")


def test_html_escapes_what_users_typed() -> None:
    mail = templates.email("password_changed", display_name="<script>x</script>", service="PEP's")
    assert mail.html is not None and "<script>" not in mail.html


def test_what_is_kept_after_purge_holds_no_code_nor_token() -> None:
    sms = templates.code_text("sms", purpose="login", code="482910", **COMMON)  # type: ignore[arg-type]
    voice = templates.code_text("voice", purpose="login", code="482910", **COMMON)  # type: ignore[arg-type]
    activation = templates.email("activation", service="PEP's", **EMAILS["activation"]).text
    for text in (sms, voice, activation):
        kept = code_free(text)
        assert not re.search(r"\d(?:[ ,]*\d){3,}", kept), kept
        assert "Z9q8w7e6r5t4y3u2" not in kept
    assert code_free(sms).endswith("#••••") and "5 minutes" in code_free(sms)

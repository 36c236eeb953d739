"""The French texts: one GSM-7 segment per code SMS ending with the WebOTP line, digits read one
by one twice, emails with a plain-text part, nothing of the code in what is kept."""

from __future__ import annotations

import dataclasses

import pytest

from authsvc.courier import gsm, templates

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
    "wrong_codes": {"display_name": "Alice"},
    "federated_link_proposed": {"display_name": "Alice", "admin_name": "Bob Martin"},
    "email_verification": {"display_name": "Alice", "code": "482910", "minutes": "5"},
    "factor_removed": {"display_name": "Alice", "factor_name": "Work phone", "by": "par vous"},
    "passkey_removed": {"display_name": "Alice", "factor_name": "Laptop", "by": "par vous"},
    "passkey_cloned": {"display_name": "Alice", "factor_name": "Laptop"},
    "factor_added": {"display_name": "Alice", "when": "03/12/2026 à 17:49 (UTC)"},
    "passkey_added": {"display_name": "Alice", "when": "03/12/2026 à 17:49 (UTC)"},
}


@pytest.mark.parametrize("kind", templates.EMAIL_KINDS)
def test_every_email_has_a_subject_plain_text_and_html(kind: str) -> None:
    mail = templates.email(kind, service="PEP's", **EMAILS[kind])
    assert mail.subject is not None
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


# Secrets of every shape: digits only, and tokens with and without a digit (about one activation
# token in 1,500 has none: a summary that masked only tokens with a digit kept those in clear).
SECRETS = {
    "digits": "482910",
    "token with digits": "tok-Z9q8w7e6r5t4y3u2",
    "token without a digit": "kPqRsTuVwXyZaBcDeFgHiJkLmNoPqRsTuVwXyZ_-abc",
}


CARRY_A_SECRET = {"activation", "email_verification"}


def every_message(secret: str) -> dict[str, templates.Rendered]:
    """Every template, rendered with `secret` as its code or token."""
    rendered = {
        f"{purpose}_code_{channel}": templates.code_message(
            channel,
            purpose=purpose,
            code=secret,
            minutes=5,
            service="PEP's",
            domain="peps.cnracl.example",
        )
        for channel in templates.CHANNELS
        for purpose in templates.PURPOSES
    }
    for kind in templates.EMAIL_KINDS:
        fields = dict(EMAILS[kind])
        for name in templates.SECRET_FIELDS & set(fields):
            fields[name] = secret
        rendered[kind] = templates.email(kind, service="PEP's", **fields)
    return rendered


@pytest.mark.parametrize("secret", list(SECRETS.values()), ids=list(SECRETS))
def test_summaries_come_from_the_template_with_placeholders(secret: str) -> None:
    for name, message in every_message(secret).items():
        carried = secret in message.text or ", ".join(secret) in message.text
        assert carried == (name in CARRY_A_SECRET or "_code_" in name), name
        for form in (secret, ", ".join(secret), " ".join(secret)):
            assert form not in message.summary, (name, message.summary)
        if carried:  # the placeholder stands where the secret was; every form is listed
            assert templates.MASK in message.summary, name
            assert secret in message.secrets and ", ".join(secret) in message.secrets
        else:
            assert message.secrets == ()
    sms = every_message(secret)["login_code_sms"].summary
    assert sms.endswith("#••••") and "5 minutes" in sms


def test_a_summary_is_the_same_whatever_the_secret() -> None:
    """Nothing of the secret shapes the summary: it is the template's, not the text's."""
    first, second = every_message("482910"), every_message("kPqRsTuVwXyZaBcDeFg")
    assert {k: m.summary for k, m in first.items()} == {k: m.summary for k, m in second.items()}


def test_a_template_cannot_write_a_secret_without_choosing_its_form() -> None:
    secret = templates.Secret("482910")
    with pytest.raises(TypeError):
        f"{secret}"
    with pytest.raises(TypeError):
        str(secret)
    assert (secret.plain, secret.spoken) == ("482910", "4, 8, 2, 9, 1, 0")
    blank = templates.Secret(None)
    assert (blank.plain, blank.spoken, blank.forms()) == ("••••", "••••", ())

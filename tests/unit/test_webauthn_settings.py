"""The WebAuthn settings: origins on the rp id's domain only, and https only in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from authsvc.config import Settings

# A production configuration that passes every other check (as tests/unit/test_config.py's).
STRICT: dict[str, object] = {
    "environment": "production",
    "secret_key": "A" * 43,
    "sms_provider": "http",
    "voice_provider": "http",
    "email_provider": "http",
    "sms_http": {"url": "https://sms.example"},
    "voice_http": {"url": "https://voice.example"},
    "email_http": {"url": "https://mail.example"},
    "tls_terminated_upstream": True,
}


def test_origins_must_be_bare_origins_on_the_rp_id() -> None:
    fine = Settings(
        webauthn_rp_id="peps.example",
        webauthn_origins=["https://peps.example", "https://app.peps.example:8443"],
    )
    assert fine.webauthn_origins == ["https://peps.example", "https://app.peps.example:8443"]
    for origin in (
        "https://evil.example",  # another domain
        "https://notpeps.example",  # a suffix, not a subdomain
        "https://peps.example/login",  # a path
        "ftp://peps.example",
        "peps.example",
    ):
        with pytest.raises(ValidationError, match="AUTHSVC_WEBAUTHN_ORIGINS"):
            Settings(webauthn_rp_id="peps.example", webauthn_origins=[origin])


def test_no_origin_means_passkeys_off() -> None:
    assert Settings().webauthn_origins == []


@pytest.mark.parametrize("origin", ["http://peps.example", "http://localhost"])
def test_production_refuses_http_origins_and_takes_https(origin: str) -> None:
    rp_id = "localhost" if "localhost" in origin else "peps.example"
    https = origin.replace("http://", "https://")
    production = {**STRICT, "webauthn_rp_id": rp_id}
    assert Settings(**production, webauthn_origins=[https]).webauthn_origins == [https]  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="production needs https"):
        Settings(**production, webauthn_origins=[https, origin])  # type: ignore[arg-type]


def test_the_passkey_cap_is_bounded_and_production_may_only_lower_it() -> None:
    assert Settings().max_passkeys_per_account == 10
    for value in (0, 51):
        with pytest.raises(ValidationError, match="max_passkeys_per_account"):
            Settings(max_passkeys_per_account=value)
    assert Settings(**STRICT, max_passkeys_per_account=3).max_passkeys_per_account == 3  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="AUTHSVC_MAX_PASSKEYS_PER_ACCOUNT: at most 10"):
        Settings(**STRICT, max_passkeys_per_account=11)  # type: ignore[arg-type]

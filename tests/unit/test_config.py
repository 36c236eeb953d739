"""Configuration may tighten every bound in the requirements and may never loosen one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from authsvc.config import DEV_ISSUER, Settings

LOOSER = [
    ("code_ttl_s", 601),
    ("max_code_attempts", 6),
    ("resend_cooldown_s", 29),
    ("max_sends_per_flow", 6),
    ("device_trust_s", 7 * 86400 + 1),
    ("session_absolute_s", 12 * 3600 + 1),
    ("session_idle_s", 30 * 60 + 1),
    ("argon2_memory_kib", 19 * 1024 - 1),
    ("argon2_time_cost", 1),
    ("code_digits", 5),
]
TIGHTER = [
    ("code_ttl_s", 120),
    ("max_code_attempts", 3),
    ("resend_cooldown_s", 60),
    ("max_sends_per_flow", 3),
    ("device_trust_s", 86400),
    ("session_absolute_s", 3600),
    ("session_idle_s", 600),
    ("argon2_memory_kib", 64 * 1024),
    ("code_digits", 8),
]


@pytest.mark.parametrize(("name", "value"), LOOSER)
def test_loosening_is_refused(name: str, value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), TIGHTER)
def test_tightening_is_accepted(name: str, value: int) -> None:
    assert getattr(Settings(**{name: value}), name) == value  # type: ignore[arg-type]


def test_defaults_are_the_requirements() -> None:
    s = Settings()
    assert (s.code_digits, s.code_ttl_s, s.max_code_attempts) == (6, 300, 5)
    assert (s.resend_cooldown_s, s.max_sends_per_flow) == (30, 5)
    assert (s.device_trust_s, s.session_absolute_s, s.session_idle_s) == (604800, 43200, 1800)
    assert (s.argon2_memory_kib, s.argon2_time_cost, s.argon2_parallelism) == (19456, 2, 1)


def test_production_needs_a_key_and_real_providers() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="development provider"):
        Settings(environment="production", secret_key="A" * 43)


def test_production_refuses_the_development_issuer_unless_allowed() -> None:
    dev = [{"issuer": DEV_ISSUER, "jwks_file": "/dev/null"}]
    strict = {
        "environment": "production",
        "secret_key": "A" * 43,
        "sms_provider": "http",
        "voice_provider": "http",
        "email_provider": "http",
        "sms_http": {"url": "https://sms.example"},
        "voice_http": {"url": "https://voice.example"},
        "email_http": {"url": "https://mail.example"},
    }
    Settings(**strict)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="development issuer"):
        Settings(**strict, federation_issuers=dev)  # type: ignore[arg-type]
    Settings(**strict, federation_issuers=dev, federation_allow_dev_issuer=True)  # type: ignore[arg-type]


def test_trusted_issuer_needs_exactly_one_key_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Settings(federation_issuers=[{"issuer": "x"}])
    with pytest.raises(ValidationError):
        Settings(federation_issuers=[{"issuer": "x", "jwks_file": "/a", "algorithms": ["HS256"]}])


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSVC_CODE_TTL_S", "240")
    assert Settings().code_ttl_s == 240
    monkeypatch.setenv("AUTHSVC_CODE_TTL_S", "900")
    with pytest.raises(ValidationError):
        Settings()


def test_the_window_of_the_code_hard_bound_only_lengthens() -> None:
    """A shorter window would let more wrong codes through: 30 days is the floor."""
    assert Settings().code_failure_window_s == 30 * 86400
    assert Settings(code_failure_window_s=90 * 86400).code_failure_window_s == 90 * 86400
    with pytest.raises(ValidationError):
        Settings(code_failure_window_s=30 * 86400 - 1)

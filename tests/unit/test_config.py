"""Configuration may tighten every bound in the requirements and may never loosen one."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from authsvc.config import DEV_ISSUER, FRANCE_AND_OVERSEAS, HttpGateway, Rate, RateLimits, Settings

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


# A production configuration that passes every check (TLS terminated by a proxy in front).
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


def test_production_refuses_the_development_issuer_unless_allowed() -> None:
    dev = [{"issuer": DEV_ISSUER, "jwks_file": "/dev/null"}]
    strict = STRICT
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


RATE_NAMES = [name for name, info in RateLimits.model_fields.items() if info.annotation is Rate]


def _default_rate(name: str) -> Rate:
    default = RateLimits.model_fields[name].default
    assert isinstance(default, Rate)
    return default


def _loosened(name: str, how: str) -> dict[str, dict[str, float]]:
    rate = _default_rate(name)
    if how == "burst":  # same average, a larger burst
        return {name: {"count": rate.count * 2, "period_s": rate.period_s * 2}}
    return {name: {"count": rate.count, "period_s": rate.period_s / 2}}  # a higher average


# Each of these weakens production; each started on the code before the production checks.
WEAKENING: list[object] = [
    pytest.param(
        {"federation_issuers": [{"issuer": "https://idp.example", "jwks_url": "http://idp/jwks"}]},
        "jwks_url",
        id="jwks-over-http",
    ),
    pytest.param({"sms_http": {"url": "http://sms.example"}}, "SMS_HTTP", id="sms-gateway-http"),
    pytest.param(
        {"voice_http": {"url": "http://voice.example"}}, "VOICE_HTTP", id="voice-gateway-http"
    ),
    pytest.param(
        {"email_http": {"url": "http://mail.example"}}, "EMAIL_HTTP", id="email-gateway-http"
    ),
    pytest.param(
        {"sms_provider": "kannel", "kannel_url": "http://kannel.example/cgi-bin/sendsms"},
        "KANNEL_URL",
        id="kannel-over-http",
    ),
    pytest.param({"tls_terminated_upstream": False}, "needs TLS", id="no-tls"),
    pytest.param(
        {"rate_limits": {"login_ip": {"count": 10_000_000, "period_s": 1}}},
        "login_ip",
        id="ten-million-per-second",
    ),
    *[
        pytest.param({"rate_limits": _loosened(name, how)}, name, id=f"{name}-{how}")
        for name in RATE_NAMES
        for how in ("burst", "average")
    ],
    pytest.param({"sms_countries": [*FRANCE_AND_OVERSEAS, "US"]}, "SMS_COUNTRIES", id="sms-us"),
    pytest.param({"voice_countries": ["FR", "CI"]}, "VOICE_COUNTRIES", id="voice-ci"),
    pytest.param({"breaker_open_s": 60}, "BREAKER_OPEN_S", id="breaker-one-minute"),
    pytest.param({"ipv6_48_multiplier": 64}, "IPV6_48_MULTIPLIER", id="wider-48-tier"),
    pytest.param({"flow_ttl_s": 1800}, "FLOW_TTL_S", id="longer-flow"),
    pytest.param({"code_ttl_s": 600}, "CODE_TTL_S", id="longer-code"),
    pytest.param({"activation_ttl_s": 7 * 86400}, "ACTIVATION_TTL_S", id="longer-activation"),
    pytest.param({"session_touch_interval_s": 300}, "TOUCH_INTERVAL", id="coarser-idle"),
    pytest.param({"federation_clock_skew_s": 120}, "CLOCK_SKEW", id="wider-skew"),
    pytest.param({"api_keys_refresh_s": 300}, "API_KEYS_REFRESH", id="revoked-key-lives-on"),
    pytest.param({"pumping_prefix_hidden_digits": 2}, "HIDDEN_DIGITS", id="narrow-prefix"),
    pytest.param(
        {"rate_limit_backend": "redis", "redis_url": "redis://redis.example:6379/0"},
        "REDIS_URL",
        id="redis-in-clear",
    ),
    pytest.param(
        {"rate_limit_backend": "redis-cluster", "redis_url": "redis://redis.example:6379"},
        "REDIS_URL",
        id="redis-cluster-in-clear",
    ),
]


@pytest.mark.parametrize(("weakening", "match"), WEAKENING)
def test_production_refuses_every_weakening_setting(
    weakening: dict[str, object], match: str
) -> None:
    Settings(**{**STRICT, **weakening, "environment": "development"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=match):
        Settings(**{**STRICT, **weakening})  # type: ignore[arg-type]


def test_every_rate_limit_is_covered() -> None:
    assert len(RATE_NAMES) == len(RateLimits.model_fields) >= 13


TIGHTENING: list[object] = [
    pytest.param({"tls_cert_file": "/etc/c.pem", "tls_key_file": "/etc/k.pem"}, id="tls-here"),
    pytest.param(
        {"rate_limits": {"login_ip": {"count": 10, "period_s": 60}}}, id="fewer-per-period"
    ),
    pytest.param(
        {"rate_limits": {"login_ip": {"count": 50, "period_s": 30}}}, id="same-average-less-burst"
    ),
    pytest.param({"sms_countries": ["FR"], "voice_countries": ["FR", "RE"]}, id="fewer-countries"),
    pytest.param({"breaker_open_s": 7200}, id="longer-breaker"),
    pytest.param({"ipv6_48_multiplier": 4}, id="narrower-48-tier"),
    pytest.param({"flow_ttl_s": 600, "api_keys_refresh_s": 5}, id="shorter-lives"),
    pytest.param({"pumping_prefix_hidden_digits": 5}, id="wider-breaker-prefix"),
    pytest.param(
        {"rate_limit_backend": "redis", "redis_url": "rediss://redis.example:6380/0"},
        id="redis-over-tls",
    ),
    pytest.param(
        {"rate_limit_backend": "redis-cluster", "redis_url": "rediss://redis-0.example:6380"},
        id="redis-cluster-over-tls",
    ),
    pytest.param({"sms_provider": "kannel", "kannel_url": "https://k/send"}, id="kannel-https"),
    pytest.param(
        {"federation_issuers": [{"issuer": "https://idp.example", "jwks_url": "https://idp/j"}]},
        id="jwks-https",
    ),
]


@pytest.mark.parametrize("tightening", TIGHTENING)
def test_production_accepts_tightening(tightening: dict[str, object]) -> None:
    Settings(**{**STRICT, **tightening})  # type: ignore[arg-type]


def test_rate_fields_anywhere_are_compared_with_their_defaults() -> None:
    """A group of limits added later (a model with Rate fields) is covered without a change."""
    from pydantic import BaseModel

    from authsvc.config import loosened_rates

    class Later(BaseModel):
        contact_sends: Rate = Rate(count=3, period_s=3600)

    class Holder(BaseModel):
        later: Later = Later()
        direct: Rate = Rate(count=5, period_s=60)

    assert loosened_rates(Holder()) == []
    looser = Holder(later=Later(contact_sends=Rate(count=4, period_s=3600)))
    assert loosened_rates(looser) == ["later.contact_sends"]
    assert loosened_rates(Holder(direct=Rate(count=5, period_s=59))) == ["direct"]


def test_the_window_of_the_code_hard_bound_only_lengthens() -> None:
    """A shorter window would let more wrong codes through: 30 days is the floor."""
    assert Settings().code_failure_window_s == 30 * 86400
    assert Settings(code_failure_window_s=90 * 86400).code_failure_window_s == 90 * 86400
    with pytest.raises(ValidationError):
        Settings(code_failure_window_s=30 * 86400 - 1)


@pytest.mark.parametrize(
    "url", ["unix:///run/redis.sock", "redis://127.0.0.1:6379/2", "http://127.0.0.1:6379"]
)
def test_a_redis_cluster_is_named_by_host_and_port_in_database_0(url: str) -> None:
    with pytest.raises(ValidationError, match="Redis Cluster"):
        Settings(rate_limit_backend="redis-cluster", redis_url=url)
    assert Settings(rate_limit_backend="redis-cluster", redis_url="redis://127.0.0.1:7000")


def test_the_key_prefix_holds_no_hash_tag() -> None:
    """The limit family's tag must be the first {...} of every key (one slot per decision)."""
    with pytest.raises(ValidationError):
        Settings(redis_key_prefix="{authsvc}:")


@pytest.mark.parametrize("secret", ["", "s", "x" * 15])
def test_a_gateway_secret_too_short_to_resist_forgery_is_refused(secret: str) -> None:
    """Attack review: with `"hmac_secret": ""` anyone knowing a challenge id could sign a
    receipt (mark a code undelivered, skip the resend cooldown, have voice offered)."""
    with pytest.raises(ValidationError, match="hmac_secret"):
        HttpGateway(url="https://sms.example/send", hmac_secret=SecretStr(secret))
    assert HttpGateway(url="https://sms.example/send", hmac_secret=SecretStr("x" * 16))


def test_the_voice_switch_needs_receipts_that_can_arrive() -> None:
    """Without a receipt listener or callback address no SMS is ever confirmed: the switch
    would follow every SMS with a call (attack review 2: calls to numbers that never answer
    with receipts)."""
    with pytest.raises(ValidationError, match="needs delivery receipts"):
        Settings(voice_fallback_after_s=60)
    assert Settings(voice_fallback_after_s=60, receipts_listen="0.0.0.0:8089")
    assert Settings(voice_fallback_after_s=60, receipts_public_url="https://authsvc.example/r")
    assert Settings(voice_fallback_after_s=0)

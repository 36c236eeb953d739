"""The service's one Settings object, read from AUTHSVC_* environment variables.

Every security number defaults to the requirements' value. Where the requirements give a bound
(code lifetime, wrong codes, sends, device trust, session lifetimes), the field's validator lets
configuration tighten it and refuses to loosen it: there is no switch that skips or weakens the
second factor, for anyone.
"""

from __future__ import annotations

import base64
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ProviderName(StrEnum):
    CONSOLE = "console"  # development: prints messages (codes in clear) on stderr
    FILE = "file"  # development: appends JSON lines to outbox_file
    HTTP = "http"  # any SMS/voice/email gateway with an HTTP API (HttpGateway, per channel)
    SMTP = "smtp"  # email only
    KANNEL = "kannel"  # SMS only: Kannel's smsbox sendsms interface


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS, usually port 465
    NONE = "none"  # a relay on the loopback only; refused in production


def _default_http_body() -> dict[str, Any]:
    return {"to": "$to", "text": "$text", "channel": "$channel", "reference": "$message_id"}


MIN_GATEWAY_SECRET = 16


class HttpGateway(BaseModel):
    """One channel's HTTP gateway, e.g. AUTHSVC_SMS_HTTP='{"url": "https://...", ...}'.

    `body` is a JSON template: in every string value, $to, $text, $subject, $channel and
    $message_id are replaced (then the whole body is JSON-encoded, so texts need no escaping).
    The request is signed: `signature_header: sha256=<hex HMAC-SHA-256 of the body>`. A 2xx
    answer is accepted, 408/429/5xx and timeouts are retried, other 4xx are permanent failures.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, SecretStr] = {}
    body: dict[str, Any] = Field(default_factory=_default_http_body)
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    # Signs our requests and checks the gateway's receipts: a short one is guessable, and an
    # empty one would let anyone forge receipts, so at least MIN_GATEWAY_SECRET characters.
    hmac_secret: SecretStr | None = None
    signature_header: str = "X-Authsvc-Signature"
    # Where the gateway's message id is in a JSON answer (dotted path); absent: our reference.
    message_id_field: str = "id"

    @field_validator("hmac_secret")
    @classmethod
    def _secret_long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < MIN_GATEWAY_SECRET:
            raise ValueError(f"hmac_secret: at least {MIN_GATEWAY_SECRET} characters")
        return secret


class ProviderEntry(BaseModel):
    """One provider of a channel's ordered list (AUTHSVC_SMS_PROVIDERS and the like): the first
    whose breaker is closed takes a message; a timeout or retryable failure sends the message's
    next attempt to the next one (courier/failover.py). `http` is the entry's own gateway (its
    url, secret, template); kannel, smtp, console and file use their AUTHSVC_KANNEL_* / SMTP_*
    / OUTBOX_FILE settings, so each of them appears at most once in a list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A label of logs, metrics and `authsvc providers status`: bounded by the configuration.
    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: ProviderName
    http: HttpGateway | None = None

    @model_validator(mode="after")
    def _gateway_fits_kind(self) -> ProviderEntry:
        if (self.kind is ProviderName.HTTP) != (self.http is not None):
            raise ValueError(f"provider {self.name}: an http entry takes `http`, others do not")
        return self

    @property
    def recorded_as(self) -> str:
        """What outbox.provider records for a message this entry took: the kind alone for the
        one-provider form (named after its kind), else "kind:name" (receipts match on it)."""
        kind = self.kind.value
        return kind if self.name == kind else f"{kind}:{self.name}"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


_DEVELOPMENT_PROVIDERS = {ProviderName.CONSOLE, ProviderName.FILE}


class RateLimitBackend(StrEnum):
    MEMORY = "memory"  # the Rust GCRA limiter, per process (one node)
    REDIS = "redis"  # one Lua GCRA script per decision, shared by every replica
    # The same scripts on a Redis Cluster (AUTHSVC_REDIS_URL names any node; the client finds
    # the others): one hash slot per limit family, failover to a replica.
    REDIS_CLUSTER = "redis-cluster"


class Rate(BaseModel):
    """`count` requests per `period_s` on average, in bursts of up to `count` (GCRA)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(ge=1, le=10_000_000)
    period_s: float = Field(gt=0, le=30 * 86400)


class RateLimits(BaseModel):
    """Every throttle, by RPC and key (AUTHSVC_RATE_LIMITS as JSON; unnamed ones keep these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Before the credential is verified only what the client controls is spent: its address
    # (password and federated attempts each have their own) and the login it names.
    login_ip: Rate = Rate(count=100, period_s=60)
    login_account: Rate = Rate(count=30, period_s=60)  # organisation + login, known or not
    login_federated_ip: Rate = Rate(count=100, period_s=60)  # assertions not yet verified
    # After the credential is verified (a right password, a valid assertion): what stands
    # between the first factor and the flows/sessions it opens, per organisation and overall.
    login_organization: Rate = Rate(count=1000, period_s=60)
    login_global: Rate = Rate(count=2000, period_s=1)
    verify_ip: Rate = Rate(count=100, period_s=60)
    verify_account: Rate = Rate(count=30, period_s=60)
    verify_global: Rate = Rate(count=5000, period_s=1)
    step_up_ip: Rate = Rate(count=100, period_s=60)
    step_up_account: Rate = Rate(count=30, period_s=3600)
    # ChangePassword checks a password like Login: its own limits, per IP and per account.
    change_password_ip: Rate = Rate(count=100, period_s=60)
    change_password_account: Rate = Rate(count=30, period_s=60)
    send_ip: Rate = Rate(count=60, period_s=3600)
    # Send budgets: per organisation and for the whole service.
    send_organization: Rate = Rate(count=5000, period_s=3600)
    send_global: Rate = Rate(count=100_000, period_s=3600)
    # Sends to one number prefix (the number without its last digits): beyond it, the prefix's
    # breaker trips (SMS/voice pumping).
    send_prefix: Rate = Rate(count=100, period_s=3600)
    # Codes to a destination not yet verified for the account (a contact being changed): the
    # requester pays, per destination and in all, never the destination's own caps.
    send_unverified_destination: Rate = Rate(count=3, period_s=3600)
    send_unverified_requester: Rate = Rate(count=10, period_s=3600)
    # Opening an authenticator app's or a passkey's window (Challenge with CHANNEL_TOTP,
    # BeginPasskeyAssertion) sends nothing, but writes the flow and an audit row: per flow (a
    # flow lives 15 minutes at most) and per client network.
    factor_window_flow: Rate = Rate(count=10, period_s=300)
    factor_window_ip: Rate = Rate(count=100, period_s=60)


def loosened_rates(model: BaseModel, path: str = "") -> list[str]:
    """The Rate fields of `model` (recursively) that are looser than their documented default.

    Generic on purpose: every Rate field, present or added later, is compared with the default
    its model class declares. A rate is tighter when it allows no more on average (count per
    period) and no larger burst (count): e.g. 50 per 30 s tightens 100 per 60 s.
    """
    found: list[str] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{path}{name}"
        if isinstance(value, Rate):
            default = info.get_default(call_default_factory=True)
            if isinstance(default, Rate) and (
                value.count > default.count
                or value.count * default.period_s > default.count * value.period_s
            ):
                found.append(where)
        elif isinstance(value, BaseModel):  # RateLimits, or any group of limits added later
            found += loosened_rates(value, where + ".")
    return found


# Default destination countries of SMS and voice codes: France, with its overseas departments
# and territories (ISO 3166 regions as phonenumbers names them).
FRANCE_AND_OVERSEAS = ("FR", "GP", "MQ", "GF", "RE", "YT", "PM", "BL", "MF", "WF", "PF", "NC")
# Production bounds beyond the fields' own (checked by Settings._limits_only_tighten): codes go
# to these countries at most, and a tripped pumping breaker stays open at least this long.
PRODUCTION_COUNTRIES = frozenset(FRANCE_AND_OVERSEAS)
PRODUCTION_MIN_BREAKER_OPEN_S = 3600
# The audit webhook's HMAC key in production: at least 256 bits, HMAC-SHA-256's strength.
AUDIT_WEBHOOK_MIN_SECRET = 32
# Settings that production may move only in the tightening direction from their documented
# default (besides the Rate fields and the breaker, checked apart): "at most" the default, or
# "at least" it. A longer flow, skew or key-cache life, or a wider pumping prefix, loosens a rule.
PRODUCTION_AT_MOST_DEFAULT: Final = (
    "code_ttl_s",
    "flow_ttl_s",
    "activation_ttl_s",
    "session_touch_interval_s",
    "federation_clock_skew_s",
    "api_keys_refresh_s",
    # A campaign link opens a contact verification: a longer life leaves it in a mailbox longer.
    "campaign_link_ttl_s",
    # More passkeys per account: more credentials an attacker with a session could plant.
    "max_passkeys_per_account",
)
PRODUCTION_AT_LEAST_DEFAULT: Final = ("pumping_prefix_hidden_digits",)
# The /48 tier of every per-IP limit is this many times the /64 budget: more loosens them all.
PRODUCTION_MAX_IPV6_48_MULTIPLIER = 8


class ApiKey(BaseModel):
    """A backend allowed to call the API, from configuration (the `backends` table holds more).

    `key` (the secret itself) or `key_sha256` (hex SHA-256 of it); `rpcs`: "*", "Service/*",
    "Service/Method" or a bare method name. With neither key, the entry names an mTLS client
    (certificate identity == name); `credentials` says which of the two name the backend.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    rpcs: tuple[str, ...] = ("*",)
    # Which credentials name this backend: "key", "mtls" or "both". Default: "key" when a key
    # is given (a certificate of the same name is then NOT accepted), "mtls" otherwise.
    credentials: Literal["key", "mtls", "both"] | None = None

    @model_validator(mode="after")
    def _credentials_fit(self) -> ApiKey:
        has_key = self.key is not None or self.key_sha256 is not None
        if self.credentials in ("key", "both") and not has_key:
            raise ValueError(f"backend {self.name}: credentials {self.credentials} need a key")
        if self.credentials == "mtls" and has_key:
            raise ValueError(f"backend {self.name}: an mtls-only backend takes no key")
        return self

    @property
    def accepts(self) -> str:
        if self.credentials is not None:
            return self.credentials
        return "key" if self.key is not None or self.key_sha256 is not None else "mtls"


DEV_ISSUER = "https://dev-idp.authsvc.invalid"


class TrustedIssuer(BaseModel):
    """A federated issuer whose assertions Login accepts, with where its keys are published."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1, max_length=256)
    jwks_file: Path | None = None
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    # Only asymmetric algorithms: never "none", never HMAC (a public key is not a secret).
    algorithms: tuple[Literal["RS256", "ES256", "EdDSA"], ...] = ("RS256", "ES256", "EdDSA")

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedIssuer:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError(f"issuer {self.issuer}: give exactly one of jwks_file and jwks_url")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTHSVC_", extra="ignore", frozen=True)

    environment: Environment = Environment.DEVELOPMENT
    listen: str = "127.0.0.1:50051"
    # Prometheus /metrics over HTTP on this HOST:PORT, apart from the gRPC port ("" = off:
    # nothing recorded). Under `serve --workers N` the parent serves every process's sums.
    metrics_listen: str = Field(default="", pattern=r"^(|\[?[0-9A-Za-z.:-]+\]?:[0-9]{1,5})$")
    database_url: str = "sqlite+aiosqlite:///var/authsvc.db"
    # Master secret (URL-safe base64 of >= 32 bytes). Subkeys for code hashing and contact
    # encryption are derived from it. Development falls back to a key file made on first use.
    secret_key: SecretStr | None = None
    secret_key_file: Path = Path("var/secret.key")

    # One-time codes (requirements: 6 digits, 5 min, never more than 10 min; 5 wrong codes).
    code_digits: int = Field(default=6, ge=6, le=10)
    code_ttl_s: int = Field(default=300, ge=60, le=600)
    max_code_attempts: int = Field(default=5, ge=1, le=5)
    resend_cooldown_s: int = Field(default=30, ge=30, le=300)
    max_sends_per_flow: int = Field(default=5, ge=1, le=5)
    # A pending flow (password accepted, code not yet entered) lives this long.
    flow_ttl_s: int = Field(default=900, ge=60, le=1800)

    # Device trust: 7 days from the code verification, never longer.
    device_trust_s: int = Field(default=7 * 86400, ge=0, le=7 * 86400)

    # Sessions (NIST AAL2): absolute 12 h, idle 30 min, never longer.
    session_absolute_s: int = Field(default=12 * 3600, ge=60, le=12 * 3600)
    session_idle_s: int = Field(default=30 * 60, ge=60, le=30 * 60)
    # ValidateSession writes last_seen at most this often per session, so that the call every
    # backend makes on every request stays a read; idle expiry is exact to within this margin.
    session_touch_interval_s: int = Field(default=60, ge=0, le=300)

    # argon2id, OWASP: m=19 MiB, t=2, p=1 are the floor.
    argon2_memory_kib: int = Field(default=19 * 1024, ge=19 * 1024)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1)
    password_hash_threads: int = Field(default=0, ge=0)  # 0: one per core

    # Delivery.
    sms_provider: ProviderName = ProviderName.CONSOLE
    voice_provider: ProviderName = ProviderName.CONSOLE
    email_provider: ProviderName = ProviderName.CONSOLE
    outbox_file: Path = Path("var/outbox.jsonl")
    dispatcher_enabled: bool = True
    dispatcher_poll_s: float = Field(default=0.2, gt=0, le=10)
    # A claimed message is leased this long: a dispatcher that dies mid-send leaves it
    # claimable again afterwards. Must exceed every provider timeout (checked below).
    dispatcher_lease_s: float = Field(default=60.0, ge=5, le=600)
    # Messages one dispatcher sends at once.
    dispatcher_concurrency: int = Field(default=32, ge=1, le=1000)
    # How long Challenge waits for the in-process dispatcher's outcome before answering
    # "queued" (0: never wait). Bounded: the API must never hang on a gateway.
    delivery_wait_s: float = Field(default=1.0, ge=0, le=5)
    # The one-provider form of a channel: AUTHSVC_<CHANNEL>_PROVIDER (and _HTTP for http).
    sms_http: HttpGateway | None = None
    voice_http: HttpGateway | None = None
    email_http: HttpGateway | None = None
    # Failover (README "Provider failover"): a channel's ordered list of providers, e.g.
    # AUTHSVC_SMS_PROVIDERS='[{"name": "primary", "kind": "http", "http": {"url": ...}},
    # {"name": "backup", "kind": "kannel"}]'. Empty: the one-provider form above (a list of one).
    # Give one form or the other for a channel, never both.
    sms_providers: tuple[ProviderEntry, ...] = ()
    voice_providers: tuple[ProviderEntry, ...] = ()
    email_providers: tuple[ProviderEntry, ...] = ()
    # A provider's breaker opens after this many consecutive timeouts or retryable failures
    # (a permanent refusal of a number is not one), stays open this long, then lets one probe
    # message through: its success closes the breaker, its failure opens it again.
    provider_breaker_failures: int = Field(default=3, ge=1, le=100)
    provider_breaker_open_s: float = Field(default=30.0, ge=1, le=3600)
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: SmtpSecurity = SmtpSecurity.STARTTLS
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "PEP's <ne-pas-repondre@peps.cnracl.example>"
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=30)
    smtp_ca_file: Path | None = None  # trust this CA (PEM) instead of the system's
    kannel_url: str = Field(default="http://127.0.0.1:13013/cgi-bin/sendsms", pattern=r"^https?://")
    kannel_username: str = "authsvc"
    kannel_password: SecretStr | None = None
    kannel_from: str | None = None  # sender id, when the operator allows one
    kannel_smsc: str | None = None  # route to this SMSC id
    kannel_timeout_s: float = Field(default=5.0, gt=0, le=30)
    # Delivery receipts (courier/receipts.py): the small HTTP listener that gateways call back,
    # e.g. "0.0.0.0:8081" (off when unset), and the base URL they reach it at, written into
    # Kannel's dlr-url (unset: Kannel is asked for no DLR).
    receipts_listen: str | None = Field(default=None, pattern=r"^[^\s:]*:\d{1,5}$")
    receipts_public_url: str | None = Field(default=None, pattern=r"^https?://[^?#]+$")
    # A signed receipt older (or further in the future) than this is refused: replay window.
    receipts_max_age_s: int = Field(default=300, ge=30, le=900)
    # The audit webhook sink (courier/audit_webhook.py), run beside the dispatcher (`authsvc
    # dispatch`, or `serve` with its in-process dispatcher): each organisation's audit events
    # POSTed in order, in signed JSON batches, at least once. Off while the URL is unset; the
    # secret signs every batch (X-Authsvc-Signature, as receipts are signed) and is required
    # with the URL (in production: an https URL and a secret of at least 32 bytes).
    audit_webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s?#]+(\?[^\s#]*)?$")
    audit_webhook_secret: SecretStr | None = None
    # One POST may take this long; the lease on an organisation's cursor lasts at least twice
    # as long, so that no other dispatcher takes it over while a POST is still in flight.
    audit_webhook_timeout_s: float = Field(default=5.0, gt=0, le=30)
    audit_webhook_lease_s: float = Field(default=30.0, ge=1, le=600)
    # Events per POST, organisations delivered at once, and how often to look for new events.
    audit_webhook_batch: int = Field(default=100, ge=1, le=1000)
    audit_webhook_concurrency: int = Field(default=4, ge=1, le=64)
    audit_webhook_poll_s: float = Field(default=1.0, gt=0, le=60)
    # A failed POST is retried after 1, 2, 4, ... seconds (with jitter), at most this long.
    audit_webhook_max_backoff_s: float = Field(default=300.0, ge=1, le=3600)
    # Kannel's dlr-mask: 1 delivered, 2 undelivered, 4 buffered, 8 SMSC accepted, 16 SMSC refused.
    kannel_dlr_mask: int = Field(default=31, ge=1, le=31)
    # Switch a code's SMS to a voice call by itself when no final receipt came this long after
    # the send (0: never; the backend may still ask for voice). At least the resend cooldown.
    # The call is a counted send of a new code under every cap (flows/voice_fallback.py).
    voice_fallback_after_s: float = Field(default=0, ge=0, le=300)
    service_name: str = "PEP's"
    webotp_domain: str = "peps.cnracl.example"
    # Passkeys (WebAuthn): the relying party id (the site's domain the credentials are bound
    # to; browsers only use a credential on that domain or its subdomains), the name that
    # authenticators show, and the exact origins (scheme://host[:port]) the browser may report
    # in clientDataJSON. No origin (the default): passkeys are off (PasskeyService answers
    # NOT_IMPLEMENTED). Production takes https:// origins only.
    webauthn_rp_id: str = Field(default="localhost", pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    webauthn_rp_name: str = Field(default="PEP's", min_length=1, max_length=64)
    webauthn_origins: list[str] = []
    # The most passkeys one account may hold (a disabled one counts until it is removed):
    # beyond it, registration answers FACTOR_LIMIT_REACHED. Each is a row and an entry of
    # every assertion's allowCredentials; production may only lower it.
    max_passkeys_per_account: int = Field(default=10, ge=1, le=50)

    # Federated login (Net-entreprises): trusted issuers and this service's client id ("aud").
    federation_client_id: str = "authsvc"
    federation_issuers: list[TrustedIssuer] = []
    federation_clock_skew_s: int = Field(default=30, ge=0, le=120)
    # The development issuer (`authsvc dev-idp`) is refused in production unless allowed here.
    federation_allow_dev_issuer: bool = False
    # An unknown kid refreshes the issuer's key set at most this often.
    federation_jwks_min_refresh_s: float = Field(default=5.0, ge=0, le=300)

    # Account administration.
    activation_ttl_s: int = Field(default=3 * 86400, ge=600, le=7 * 86400)
    services: dict[str, str] = {
        "DECLARATIONS": "Déclarations individuelles",
        "DOSSIERS": "Dossiers de pension",
        "SIMULATIONS": "Simulations de pension",
    }

    # Readiness campaigns (authsvc/campaigns/). Reminders follow at this interval until the
    # account is ready or the campaign ends; each email's link lives at most campaign_link_ttl_s.
    campaign_reminder_interval_s: int = Field(default=7 * 86400, ge=3600, le=60 * 86400)
    campaign_duration_s: int = Field(default=90 * 86400, ge=86400, le=365 * 86400)
    campaign_link_ttl_s: int = Field(default=14 * 86400, ge=3600, le=30 * 86400)
    # The link of a campaign email; {token} is replaced by its single-use token. The token sits
    # in the fragment: a browser never sends it to a web server's access log.
    campaign_link_url: str = Field(
        default="https://peps.cnracl.example/preparer#jeton={token}",
        pattern=r"^https://.*\{token\}",
    )
    # Campaign emails may use this much of the email provider: per organisation per day, and
    # in all per minute (set it at or under the provider's own limit, leaving room for codes
    # and notices, which never wait on a campaign).
    campaign_emails_per_organization_per_day: int = Field(default=2000, ge=1, le=1_000_000)
    campaign_emails_per_minute: int = Field(default=300, ge=1, le=100_000)
    # How often the server runs due campaign rounds; how many recipients one transaction takes.
    campaign_tick_s: float = Field(default=60.0, gt=0, le=3600)
    campaign_batch: int = Field(default=500, ge=1, le=10_000)

    # Abuse resistance (README "Security").
    rate_limit_backend: RateLimitBackend = RateLimitBackend.MEMORY
    redis_url: str = "redis://127.0.0.1:6379/0"
    # No braces: the key's hash tag ({send}, {login}, ...) must be the first one in it.
    redis_key_prefix: str = Field(default="authsvc:", pattern=r"^[^{}]*$")
    redis_timeout_s: float = Field(default=0.5, gt=0, le=10)
    rate_limits: RateLimits = RateLimits()
    # Per-IP limits key an IPv4 address (IPv4-mapped IPv6 included) alone and an IPv6 address
    # by its /64; the /48 around it has budgets this many times the /64's.
    ipv6_48_multiplier: int = Field(default=8, ge=1, le=64)
    # Per destination number (requirements: at most 10 an hour and 20 a day).
    phone_sends_per_hour: int = Field(default=10, ge=1, le=10)
    phone_sends_per_day: int = Field(default=20, ge=1, le=20)
    sms_countries: tuple[str, ...] = FRANCE_AND_OVERSEAS
    voice_countries: tuple[str, ...] = FRANCE_AND_OVERSEAS
    # The prefix a pumping breaker watches: the E.164 number without this many last digits.
    pumping_prefix_hidden_digits: int = Field(default=4, ge=2, le=8)
    breaker_open_s: int = Field(default=3600, ge=60, le=7 * 86400)
    # Lockouts: 5 consecutive wrong passwords lock the login 15 min, doubling, at most 24 h;
    # 10 consecutive wrong codes lock the second factor 15 min; 100 within the window below
    # lock it until an operator unlocks it (`authsvc unlock`).
    password_lock_threshold: int = Field(default=5, ge=1, le=5)
    password_lock_s: int = Field(default=900, ge=900, le=86400)
    password_lock_max_s: int = Field(default=86400, ge=900, le=86400)
    code_lock_threshold: int = Field(default=10, ge=1, le=10)
    code_lock_s: int = Field(default=900, ge=900, le=86400)
    code_failure_hard_bound: int = Field(default=100, ge=1, le=100)
    # The hard bound counts wrong codes over this fixed window (from the first of them); no
    # success resets it. 30 days at least: a shorter window would let more guesses through.
    code_failure_window_s: int = Field(default=30 * 86400, ge=30 * 86400, le=365 * 86400)
    # Callers: API keys (and/or mTLS client certificates) of the backends allowed to call.
    api_keys: tuple[ApiKey, ...] = ()
    api_keys_refresh_s: float = Field(default=10.0, gt=0, le=300)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # mTLS: clients must present a certificate from this CA; its identity names the backend.
    tls_client_ca_file: Path | None = None
    # The operator's statement that a proxy in front of the service terminates TLS (the gRPC
    # port itself then speaks plaintext to that proxy only). Production needs TLS here or this.
    tls_terminated_upstream: bool = False

    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "info"
    # OpenTelemetry traces (authsvc/tracing.py): spans exported over OTLP/HTTP, configured by the
    # standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...).
    tracing: bool = False
    # Readiness (grpc.health.v1 "authsvc.readiness"): how often the database, its migrations and
    # Redis are probed, off every call's path, and how long one probe may take.
    readiness_probe_interval_s: float = Field(default=1.0, ge=0.1, le=60)
    readiness_probe_timeout_s: float = Field(default=1.0, gt=0, le=30)
    grace_period_s: float = Field(default=10.0, ge=0)
    # After SIGTERM, health answers NOT_SERVING and the server goes on serving this long before
    # it stops taking calls: the time the load balancers take to notice (HAProxy's check
    # interval times `fall`, a Kubernetes readiness period), so that no call reaches a server
    # that refuses it. 0: stop taking calls at once (one process, nothing in front).
    shutdown_delay_s: float = Field(default=0.0, ge=0, le=60)
    default_region: str = "FR"
    # uvloop runs `serve`, its workers and `dispatch` (less CPU per call than asyncio's own
    # loop); false falls back to asyncio's loop, e.g. to rule uvloop out when chasing a bug.
    uvloop: bool = True

    def channel_providers(self, channel: str) -> tuple[ProviderEntry, ...]:
        """The channel's providers in order: its list, or the one-provider form as a list of one
        named after its kind."""
        listed: tuple[ProviderEntry, ...] = getattr(self, f"{channel}_providers")
        if listed:
            return listed
        kind: ProviderName = getattr(self, f"{channel}_provider")
        gateway = getattr(self, f"{channel}_http") if kind is ProviderName.HTTP else None
        if kind is ProviderName.HTTP and gateway is None:
            raise ValueError(f"AUTHSVC_{channel.upper()}_HTTP is required by the http provider")
        return (ProviderEntry(name=kind.value, kind=kind, http=gateway),)

    @model_validator(mode="after")
    def _providers_fit_channels(self) -> Settings:
        for channel in ("sms", "voice", "email"):
            variable = f"AUTHSVC_{channel.upper()}"
            if getattr(self, f"{channel}_providers") and (
                {f"{channel}_provider", f"{channel}_http"} & self.model_fields_set
            ):
                raise ValueError(
                    f"{variable}_PROVIDERS: give either the list or {variable}_PROVIDER/_HTTP"
                )
            entries = self.channel_providers(channel)
            names = [entry.name for entry in entries]
            if len(set(names)) != len(names):
                raise ValueError(f"{variable}_PROVIDERS: provider names must differ")
            kinds = [entry.kind for entry in entries if entry.kind is not ProviderName.HTTP]
            if len(set(kinds)) != len(kinds):
                raise ValueError(
                    f"{variable}_PROVIDERS: only http entries may repeat (each has its gateway)"
                )
            for entry in entries:
                if entry.kind is ProviderName.SMTP and channel != "email":
                    raise ValueError(f"{variable}_PROVIDER: smtp sends email only")
                if entry.kind is ProviderName.KANNEL and channel != "sms":
                    raise ValueError(f"{variable}_PROVIDER: kannel sends SMS only")
                timeout = {
                    ProviderName.HTTP: entry.http.timeout_s if entry.http else 0.0,
                    ProviderName.SMTP: self.smtp_timeout_s,
                    ProviderName.KANNEL: self.kannel_timeout_s,
                }.get(entry.kind, 0.0)
                if self.dispatcher_lease_s < 2 * timeout:
                    raise ValueError(
                        "AUTHSVC_DISPATCHER_LEASE_S must be at least twice every provider timeout"
                    )
        return self

    def uses(self, kind: ProviderName) -> bool:
        """Whether any channel has a provider of this kind."""
        return any(
            entry.kind is kind
            for channel in ("sms", "voice", "email")
            for entry in self.channel_providers(channel)
        )

    @model_validator(mode="after")
    def _security_settings_fit(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("AUTHSVC_TLS_CERT_FILE and AUTHSVC_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("AUTHSVC_TLS_CLIENT_CA_FILE needs AUTHSVC_TLS_CERT_FILE")
        if self.password_lock_max_s < self.password_lock_s:
            raise ValueError("AUTHSVC_PASSWORD_LOCK_MAX_S must be at least AUTHSVC_PASSWORD_LOCK_S")
        if self.rate_limit_backend is RateLimitBackend.REDIS_CLUSTER:
            parts = urlsplit(self.redis_url)
            if parts.scheme not in ("redis", "rediss") or parts.path.strip("/") not in ("", "0"):
                raise ValueError(
                    "AUTHSVC_REDIS_URL: a Redis Cluster is reached at redis:// or rediss:// "
                    "host:port (database 0, no unix socket)"
                )
        return self

    @model_validator(mode="after")
    def _audit_webhook_fits(self) -> Settings:
        if (self.audit_webhook_url is None) != (self.audit_webhook_secret is None):
            raise ValueError(
                "AUTHSVC_AUDIT_WEBHOOK_URL and AUTHSVC_AUDIT_WEBHOOK_SECRET go together "
                "(the receiver must be able to tell our batches from anyone's)"
            )
        if self.audit_webhook_lease_s < 2 * self.audit_webhook_timeout_s:
            raise ValueError(
                "AUTHSVC_AUDIT_WEBHOOK_LEASE_S: at least twice AUTHSVC_AUDIT_WEBHOOK_TIMEOUT_S"
            )
        return self

    @model_validator(mode="after")
    def _webauthn_origins_fit_the_rp_id(self) -> Settings:
        # An origin outside the rp id's domain could never produce a valid assertion (the
        # browser refuses), and one with a path or a query is a mistake: say so at start.
        for origin in self.webauthn_origins:
            parts = urlsplit(origin)
            host = (parts.hostname or "").lower()
            if (
                parts.scheme not in ("http", "https")
                or f"{parts.scheme}://{parts.netloc}" != origin
                or not (host == self.webauthn_rp_id or host.endswith("." + self.webauthn_rp_id))
            ):
                raise ValueError(
                    f"AUTHSVC_WEBAUTHN_ORIGINS: {origin!r} is not scheme://host[:port] on "
                    f"AUTHSVC_WEBAUTHN_RP_ID ({self.webauthn_rp_id}) or one of its subdomains"
                )
        return self

    @model_validator(mode="after")
    def _voice_fallback_waits_for_the_cooldown(self) -> Settings:
        # The switch is a resend on the flow: before the cooldown it would always be refused.
        if 0 < self.voice_fallback_after_s < self.resend_cooldown_s:
            raise ValueError(
                "AUTHSVC_VOICE_FALLBACK_AFTER_S: 0 (off) or at least AUTHSVC_RESEND_COOLDOWN_S"
            )
        # The switch waits for a receipt that does not come: where none can reach the service
        # (no listener, no callback address), every SMS would be followed by a call.
        if self.voice_fallback_after_s > 0 and not (
            self.receipts_listen or self.receipts_public_url
        ):
            raise ValueError(
                "AUTHSVC_VOICE_FALLBACK_AFTER_S needs delivery receipts "
                "(AUTHSVC_RECEIPTS_LISTEN or AUTHSVC_RECEIPTS_PUBLIC_URL): without them every "
                "SMS would be followed by a voice call"
            )
        return self

    @model_validator(mode="after")
    def _production_is_strict(self) -> Settings:
        if self.environment is not Environment.PRODUCTION:
            return self
        if not self.federation_allow_dev_issuer and any(
            trusted.issuer == DEV_ISSUER for trusted in self.federation_issuers
        ):
            raise ValueError("the development issuer is refused in production")
        if self.uses(ProviderName.SMTP) and self.smtp_security is SmtpSecurity.NONE:
            raise ValueError("AUTHSVC_SMTP_SECURITY: none is for development")
        if self.secret_key is None:
            raise ValueError("AUTHSVC_SECRET_KEY is required in production")
        # console and file providers write codes in clear: development only.
        for channel in ("sms", "voice", "email"):
            if any(e.kind in _DEVELOPMENT_PROVIDERS for e in self.channel_providers(channel)):
                raise ValueError(f"AUTHSVC_{channel.upper()}_PROVIDER: a development provider")
        # A passkey over plain http is phishable by whoever is on the path (no exception: not
        # even localhost, which is for development).
        for origin in self.webauthn_origins:
            if urlsplit(origin).scheme != "https":
                raise ValueError(f"AUTHSVC_WEBAUTHN_ORIGINS: production needs https:// ({origin})")
        for setting, url in self._urls_in_use():
            if urlsplit(url).scheme.lower() != "https":
                raise ValueError(f"{setting}: production needs an https:// URL")
        secret = self.audit_webhook_secret
        if (
            secret is not None
            and len(secret.get_secret_value().encode()) < AUDIT_WEBHOOK_MIN_SECRET
        ):
            raise ValueError(
                f"AUTHSVC_AUDIT_WEBHOOK_SECRET: at least {AUDIT_WEBHOOK_MIN_SECRET} bytes in "
                "production"
            )
        if self.tls_cert_file is None and not self.tls_terminated_upstream:
            raise ValueError(
                "production needs TLS: AUTHSVC_TLS_CERT_FILE and AUTHSVC_TLS_KEY_FILE, or "
                "AUTHSVC_TLS_TERMINATED_UPSTREAM=true when a proxy in front terminates it"
            )
        if self.rate_limit_backend is not RateLimitBackend.MEMORY and not _redis_url_is_private(
            self.redis_url
        ):
            raise ValueError(
                "AUTHSVC_REDIS_URL: production needs rediss:// (TLS), a unix socket or loopback"
            )
        self._limits_only_tighten()
        return self

    def _urls_in_use(self) -> list[tuple[str, str]]:
        """Every URL the service fetches from or sends to, with the setting that names it."""
        urls = [
            (f"AUTHSVC_FEDERATION_ISSUERS ({trusted.issuer}) jwks_url", trusted.jwks_url)
            for trusted in self.federation_issuers
            if trusted.jwks_url is not None
        ]
        for channel in ("sms", "voice", "email"):
            gateway: HttpGateway | None = getattr(self, f"{channel}_http")
            if gateway is not None:
                urls.append((f"AUTHSVC_{channel.upper()}_HTTP url", gateway.url))
            for entry in getattr(self, f"{channel}_providers"):
                if entry.http is not None:
                    setting = f"AUTHSVC_{channel.upper()}_PROVIDERS ({entry.name}) url"
                    urls.append((setting, entry.http.url))
        if self.uses(ProviderName.KANNEL):
            urls.append(("AUTHSVC_KANNEL_URL", self.kannel_url))
        if self.audit_webhook_url is not None:  # audit events, signed with the secret
            urls.append(("AUTHSVC_AUDIT_WEBHOOK_URL", self.audit_webhook_url))
        if self.receipts_public_url is not None:  # Kannel sends our receipt token to it
            urls.append(("AUTHSVC_RECEIPTS_PUBLIC_URL", self.receipts_public_url))
        return urls

    def _limits_only_tighten(self) -> None:
        """Production may tighten the documented limits, never loosen them (README "Security").

        Bounds that hold in every environment are the fields' own ge/le; these hold in
        production on top: every Rate (generically, against its default), the breaker's open
        time, the IPv6 /48 tier's multiplier, and the destination countries (a subset of the
        default set).
        """
        loosened = loosened_rates(self)
        if loosened:
            raise ValueError(
                f"AUTHSVC_RATE_LIMITS: {', '.join(loosened)} looser than the documented default; "
                "production may only tighten rate limits"
            )
        if self.breaker_open_s < PRODUCTION_MIN_BREAKER_OPEN_S:
            raise ValueError(
                f"AUTHSVC_BREAKER_OPEN_S: at least {PRODUCTION_MIN_BREAKER_OPEN_S} in production"
            )
        for name in (*PRODUCTION_AT_MOST_DEFAULT, *PRODUCTION_AT_LEAST_DEFAULT):
            default = type(self).model_fields[name].default
            value = getattr(self, name)
            if value > default if name in PRODUCTION_AT_MOST_DEFAULT else value < default:
                bound = "at most" if name in PRODUCTION_AT_MOST_DEFAULT else "at least"
                raise ValueError(f"AUTHSVC_{name.upper()}: {bound} {default} in production")
        if self.ipv6_48_multiplier > PRODUCTION_MAX_IPV6_48_MULTIPLIER:
            raise ValueError(
                f"AUTHSVC_IPV6_48_MULTIPLIER: at most {PRODUCTION_MAX_IPV6_48_MULTIPLIER} in "
                "production (a wider /48 tier loosens every per-IP limit)"
            )
        for setting in ("sms_countries", "voice_countries"):
            widened = set(getattr(self, setting)) - PRODUCTION_COUNTRIES
            if widened:
                raise ValueError(
                    f"AUTHSVC_{setting.upper()}: {', '.join(sorted(widened))} beyond the default "
                    "countries; production may only narrow them"
                )

    def master_key(self) -> bytes:
        """The master secret; in development, created in `secret_key_file` on first use."""
        if self.secret_key is not None:
            return _decode_key(self.secret_key.get_secret_value())
        path = self.secret_key_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
            path.chmod(0o600)
        return _decode_key(path.read_text().strip())


def _redis_url_is_private(url: str) -> bool:
    """rediss:// (TLS), a unix socket, or a server on this host's loopback."""
    parts = urlsplit(url)
    if parts.scheme in ("rediss", "unix"):
        return True
    return parts.scheme == "redis" and parts.hostname in ("127.0.0.1", "::1", "localhost")


def _decode_key(text: str) -> bytes:
    key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(key) < 32:
        raise ValueError("the secret key must hold at least 32 bytes")
    return key


# How pydantic's error types read as a bound, from the error's context.
_BOUNDS: Final = {
    "less_than_equal": "at most {le}",
    "less_than": "less than {lt}",
    "greater_than_equal": "at least {ge}",
    "greater_than": "more than {gt}",
    "too_short": "at least {min_length} long",
    "too_long": "at most {max_length} long",
    "enum": "one of {expected}",
    "literal_error": "one of {expected}",
}


def describe_refusal(error: ValidationError) -> list[str]:
    """One line per refused setting, naming the variable, its value and the bound it breaks.

    The value is shown only for numbers, booleans and choices: any other setting (a URL, a JSON
    document, a key) may hold a secret.
    """
    lines = []
    for problem in error.errors(include_url=False):
        location = [str(part) for part in problem["loc"]]
        context = problem.get("ctx") or {}
        template = _BOUNDS.get(problem["type"])
        bound = template.format(**context) if template else problem["msg"]
        if not location:  # a rule across settings (model validator): its message says it all
            lines.append(f"configuration refused: {bound.removeprefix('Value error, ')}")
            continue
        variable = f"AUTHSVC_{location[0].upper()}"
        inner = f" ({'.'.join(location[1:])})" if len(location) > 1 else ""
        field = Settings.model_fields.get(location[0])
        shown = field is not None and len(location) == 1 and _value_is_harmless(field.annotation)
        value = f"={problem['input']}" if shown else " (value not shown)"
        lines.append(f"{variable}{value} refused{inner}: {bound}")
    return lines


def _value_is_harmless(annotation: object) -> bool:
    return annotation in (int, float, bool) or (
        isinstance(annotation, type) and issubclass(annotation, StrEnum)
    )

"""Callers and pumping breakers: the backends allowed to call, and the number prefixes whose
sends are suspended."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base


class Backend(Base):
    """A backend that may call the API: by API key (only its SHA-256 is kept) and/or by mTLS
    (a client certificate whose identity is `name`)."""

    __tablename__ = "backends"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    # Space-separated patterns: "*", "authsvc.v1.AuthService/*", "authsvc.v1.AuthService/Login".
    rpcs: Mapped[str] = mapped_column(Text)
    # Which credentials name this backend: "key" (API key only), "mtls" (client certificate
    # only) or "both". A certificate whose identity is `name` counts only with mtls or both.
    credentials: Mapped[str] = mapped_column(String(8), default="key", server_default="key")
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SendBreaker(Base):
    """A number prefix whose sends spiked: sends to it stop until `open_until` or a reset.

    `generation` grows at each reset, so that the prefix's rate-limit bucket starts afresh.
    """

    __tablename__ = "send_breakers"

    prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    generation: Mapped[int] = mapped_column(default=0)
    tripped_at: Mapped[datetime | None]
    open_until: Mapped[datetime | None]
    trips: Mapped[int] = mapped_column(default=0)
    reset_at: Mapped[datetime | None]


class LoginFailures(Base):
    """Password lockout of a login that does not exist (organisation + login, as a keyed
    digest): the same counters as on an account, so that an unknown login is locked exactly
    like a known one and the answer reveals nothing."""

    __tablename__ = "login_failures"

    key_digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    failed_password_count: Mapped[int] = mapped_column(default=0)
    password_lock_count: Mapped[int] = mapped_column(default=0)
    password_locked_until: Mapped[datetime | None]
    password_checks_pending: Mapped[int] = mapped_column(default=0, server_default="0")
    password_pending_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]

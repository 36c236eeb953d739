"""Accounts. The phone number is kept sealed (AES-GCM) with a keyed digest for look-ups and a
masked form for display: a full number never sits in the database in clear."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class AccountStatus(StrEnum):
    PENDING_ACTIVATION = "pending_activation"
    ACTIVE = "active"
    LOCKED = "locked"
    DISABLED = "disabled"


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("organization_id", "login"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    login: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    # Null only for accounts imported without a usable number: they cannot log in (no code can
    # reach them) until an administrator sets one; the readiness report lists them.
    phone_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    phone_masked: Mapped[str | None] = mapped_column(String(32))
    phone_kind: Mapped[str | None] = mapped_column(String(16))
    phone_region: Mapped[str | None] = mapped_column(String(2))
    # The last time a code sent to this phone was entered correctly.
    phone_verified_at: Mapped[datetime | None]
    role: Mapped[Role] = mapped_column(String(16))
    status: Mapped[AccountStatus] = mapped_column(String(32))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    activation_token_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    activation_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Lockouts (policies/lockout.py), changed only by conditional UPDATEs. Consecutive wrong
    # passwords since the last full success; locks so far (each one twice as long).
    failed_password_count: Mapped[int] = mapped_column(default=0, server_default="0")
    password_lock_count: Mapped[int] = mapped_column(default=0, server_default="0")
    password_locked_until: Mapped[datetime | None]
    # Password checks reserved and not yet settled (their argon2 runs): a check runs only if
    # it fits, with the failures counted, under the threshold. The reservation is a lease:
    # one lost with its process counts for nothing once `password_pending_until` passes.
    password_checks_pending: Mapped[int] = mapped_column(default=0, server_default="0")
    password_pending_until: Mapped[datetime | None]
    # Consecutive wrong codes since the last full success, whatever the flow.
    failed_code_count: Mapped[int] = mapped_column(default=0, server_default="0")
    code_locked_until: Mapped[datetime | None]
    # Wrong codes in a fixed window (`code_failure_window_s`, from the first of them), that no
    # success resets: the hard bound. The last notice of wrong codes after a first factor.
    code_window_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    code_window_started_at: Mapped[datetime | None]
    # Raised by every change that ends the account's sessions and device trust (a new
    # password, a new phone...), in the same transaction and on this row first. A login
    # decided on credentials read before the change (its first factor checked meanwhile)
    # compares it in its verdict and writes nothing: the rows it would have trusted are gone.
    security_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    code_failures_notified_at: Mapped[datetime | None]

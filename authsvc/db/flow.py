"""Flows: a login (or step-up) waiting for its one-time code.

The current challenge lives on the flow row so that a single conditional UPDATE can decide a send
(cooldown, send cap) or a verification (single use, attempt cap, expiry) atomically. The attempt
count belongs to the flow, not to the challenge: a resend never resets it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class FlowPurpose(StrEnum):
    LOGIN = "login"
    STEP_UP = "step_up"
    CONTACT_VERIFICATION = "contact_verification"
    FEDERATED_LINK = "federated_link"
    FEDERATED_UNLINK = "federated_unlink"


class FlowStatus(StrEnum):
    PENDING = "pending"  # waiting for a correct code
    COMPLETED = "completed"  # the code was right; the session or grant was issued
    FAILED = "failed"  # too many wrong codes: dead for good


class Flow(Base):
    __tablename__ = "flows"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    purpose: Mapped[FlowPurpose] = mapped_column(String(32))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    status: Mapped[FlowStatus] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    user_agent: Mapped[str] = mapped_column(String(512))
    ip_address: Mapped[str] = mapped_column(String(64))
    # The current challenge (null until the first send).
    challenge_id: Mapped[uuid.UUID | None]
    channel: Mapped[str | None] = mapped_column(String(16))
    code_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    code_expires_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    send_count: Mapped[int] = mapped_column(default=0)
    last_sent_at: Mapped[datetime | None]
    failed_attempts: Mapped[int] = mapped_column(default=0)
    # Step-up: what the grant will be bound to.
    session_id: Mapped[uuid.UUID | None]
    action: Mapped[str | None] = mapped_column(String(32))
    target_account_id: Mapped[uuid.UUID | None]
    values_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # Contact verification: the new email or phone, sealed; the code goes there.
    contact_kind: Mapped[str | None] = mapped_column(String(8))
    contact_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    contact_masked: Mapped[str | None] = mapped_column(String(320))
    # Federated link/unlink: the identity concerned.
    federated_issuer: Mapped[str | None] = mapped_column(String(256))
    federated_subject: Mapped[str | None] = mapped_column(String(256))

"""The audit trail: append-only security events (a database trigger refuses UPDATE and DELETE)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_org_seq", "organization_id", "sequence"),)

    # BigInteger on PostgreSQL, INTEGER (the rowid alias, autoincrementing) on SQLite.
    sequence: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    occurred_at: Mapped[datetime]
    event_type: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(64))
    actor_account_id: Mapped[uuid.UUID | None]
    target_account_id: Mapped[uuid.UUID | None]
    ip_address: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)  # JSON object of strings, never a secret

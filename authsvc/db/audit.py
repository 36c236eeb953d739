"""The audit trail: append-only security events (a database trigger refuses UPDATE and DELETE),
and the cursors of the audit webhook sinks that read it as their outbox."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_org_seq", "organization_id", "sequence"),
        # The export order (statements/audit_feed.py): the writer's transaction, then sequence.
        Index("ix_audit_events_feed", "txid", "sequence"),
        Index("ix_audit_events_org_feed", "organization_id", "txid", "sequence"),
    )

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
    # The id of the transaction that wrote the row: PostgreSQL's pg_current_xact_id() (the
    # migration's server default), 0 on SQLite (one writer at a time) and for rows older than
    # migration 0015. Never written by the service: INSERTs leave it to the default.
    txid: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class AuditSinkCursor(Base):
    """How far one audit sink (the webhook) has delivered one organisation's events, and who
    holds the right to deliver the next ones. The nil UUID stands for events of no
    organisation (a logout of an unknown session, an assertion of an unknown issuer)."""

    __tablename__ = "audit_sink_cursors"

    sink: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # The position of the last delivered event (txid, sequence): (0, 0) before the first.
    last_txid: Mapped[int] = mapped_column(BigInteger)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    leased_until: Mapped[datetime | None]
    # Consecutive failed deliveries, and when the next attempt is due (backoff).
    failures: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(200))

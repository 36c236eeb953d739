"""Readiness campaigns: emails to every account that is not ready, reminders until it is.

A campaign belongs to the organisation that runs it (the organisation itself, or a relay for its
members). Each account concerned is a recipient row, claimed by one conditional UPDATE per send
(due, still waiting), so that concurrent workers never email an account twice in a round. The
link token of the last email is kept as its SHA-256 only, and spent by one conditional UPDATE.
Sends are paid from `send_budgets` windows (per organisation per day, and the email provider's
per-minute limit), each claimed by one conditional UPDATE as well. `readiness_days` keeps one
row per organisation per day: the trend a relay looks at.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base


class CampaignStatus(StrEnum):
    RUNNING = "running"
    ENDED = "ended"


class RecipientStatus(StrEnum):
    WAITING = "waiting"  # not ready: emailed every reminder interval
    READY = "ready"  # became ready: never emailed again


class Campaign(Base):
    __tablename__ = "readiness_campaigns"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    # The administrator who started it (None: an operator, from the command line).
    started_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[CampaignStatus] = mapped_column(String(16))
    reminder_interval_s: Mapped[int]
    started_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class CampaignRecipient(Base):
    __tablename__ = "campaign_recipients"
    __table_args__ = (Index("ix_campaign_recipients_due", "status", "next_send_at"),)

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("readiness_campaigns.id"), primary_key=True
    )
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    # The account's organisation: whose budget pays its emails, whose progress it counts in.
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    status: Mapped[RecipientStatus] = mapped_column(String(16))
    sends: Mapped[int] = mapped_column(default=0)
    next_send_at: Mapped[datetime | None]
    last_sent_at: Mapped[datetime | None]
    last_message_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    # SHA-256 of the link token of the last email (each email replaces the previous link).
    link_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    link_expires_at: Mapped[datetime | None]
    link_used_at: Mapped[datetime | None]
    ready_at: Mapped[datetime | None]


class SendBudget(Base):
    """Emails spent in one window of one budget ("org:<id>" per day, "provider" per minute)."""

    __tablename__ = "send_budgets"

    budget: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    spent: Mapped[int] = mapped_column(default=0)
    # What the last claim obtained: written by the claim's own UPDATE, read by its RETURNING.
    last_claim: Mapped[int] = mapped_column(default=0)


class ReadinessDay(Base):
    """An organisation's readiness on one day (the last recording of the day wins)."""

    __tablename__ = "readiness_days"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id"), primary_key=True
    )
    day: Mapped[date] = mapped_column(primary_key=True)
    accounts_total: Mapped[int]
    ready: Mapped[int]
    no_phone: Mapped[int]
    invalid_phone: Mapped[int]
    phone_unverified: Mapped[int]
    pending_activation: Mapped[int]
    recorded_at: Mapped[datetime]

"""Federated identities (issuer + subject → account) and the single-use record of assertions."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class FederatedIdentity(Base):
    __tablename__ = "federated_identities"
    __table_args__ = (
        UniqueConstraint("issuer", "subject"),
        UniqueConstraint("account_id", "issuer"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(String(256))
    linked_at: Mapped[datetime]


class UsedAssertion(Base):
    """A `jti` seen once; the primary key makes a second use fail atomically, on every replica."""

    __tablename__ = "used_assertions"

    issuer: Mapped[str] = mapped_column(String(256), primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)

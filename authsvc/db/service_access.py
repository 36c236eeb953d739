"""Which platform services an account may use (codes from the configured catalogue)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base


class ServiceAccess(Base):
    __tablename__ = "service_access"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    service_code: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[datetime]
    granted_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))

"""Action grants: what a step-up Verify gives, consumed once by the operation it authorises."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class ActionGrant(Base):
    __tablename__ = "action_grants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id"))
    flow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flows.id"), unique=True)
    action: Mapped[str] = mapped_column(String(32))
    target_account_id: Mapped[uuid.UUID | None]
    values_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    redeemed_at: Mapped[datetime | None]

"""Relays (centres de gestion): an organisation that relays the campaign to member organisations.

An operator designates a relay (`authsvc relay add`); its administrators may then add or remove
members over the API with a step-up. A relay's staff read, per member, the readiness counts, the
administrators as members see them, and the campaign's progress; nothing about accounts.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base


class Relay(Base):
    """An organisation designated as a relay by an operator."""

    __tablename__ = "relays"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id"), primary_key=True
    )
    designated_at: Mapped[datetime]


class RelayMember(Base):
    __tablename__ = "relay_members"

    relay_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("relays.organization_id"), primary_key=True
    )
    member_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id"), primary_key=True, index=True
    )
    added_at: Mapped[datetime]

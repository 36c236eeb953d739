"""What the flows hand back to the API layer: plain values, no ORM rows, no protobuf."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from authsvc.db import FlowPurpose


@dataclass(frozen=True)
class PendingFlowView:
    flow_id: uuid.UUID
    purpose: FlowPurpose
    channels: tuple[str, ...]
    default_channel: str
    masked_destination: str
    expires_at: datetime


@dataclass(frozen=True)
class IssuedSession:
    token: str
    account_id: uuid.UUID
    assurance_level: str
    expires_at: datetime
    idle_expires_at: datetime


@dataclass(frozen=True)
class ChallengeView:
    challenge_id: uuid.UUID
    channel: str
    masked_destination: str
    code_expires_at: datetime
    resend_at: datetime
    sends_remaining: int
    delivery_status: str
    # After an undelivered or abandoned message: the channel that reaches the same destination.
    next_channel: str | None = None


@dataclass(frozen=True)
class LoginVerified:
    session: IssuedSession
    device_token: str
    device_trust_expires_at: datetime

"""Persistence: typed SQLAlchemy 2.0 models (one module per aggregate), engine, migrations."""

from authsvc.db.account import Account, AccountStatus, Role
from authsvc.db.base import Base
from authsvc.db.device import TrustedDevice
from authsvc.db.flow import Flow, FlowPurpose, FlowStatus
from authsvc.db.organization import Organization
from authsvc.db.outbox import MessageStatus, OutboxMessage
from authsvc.db.session import Session

__all__ = [
    "Account",
    "AccountStatus",
    "Base",
    "Flow",
    "FlowPurpose",
    "FlowStatus",
    "MessageStatus",
    "Organization",
    "OutboxMessage",
    "Role",
    "Session",
    "TrustedDevice",
]

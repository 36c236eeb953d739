"""Persistence: typed SQLAlchemy 2.0 models (one module per aggregate), engine, migrations."""

from authsvc.db.account import Account, AccountStatus, Role
from authsvc.db.audit import AuditEvent, AuditSinkCursor
from authsvc.db.base import Base
from authsvc.db.campaign import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    ReadinessDay,
    RecipientStatus,
    SendBudget,
)
from authsvc.db.device import TrustedDevice
from authsvc.db.factor import SecondFactor
from authsvc.db.federation import FederatedIdentity, UsedAssertion
from authsvc.db.flow import Flow, FlowPurpose, FlowStatus
from authsvc.db.grant import ActionGrant
from authsvc.db.organization import Organization
from authsvc.db.outbox import MessageStatus, OutboxMessage, Receipt
from authsvc.db.passkey import PasskeyCeremony, PasskeyCredential
from authsvc.db.relay import Relay, RelayMember
from authsvc.db.security import Backend, LoginFailures, SendBreaker
from authsvc.db.service_access import ServiceAccess
from authsvc.db.session import Session

__all__ = [
    "Account",
    "AccountStatus",
    "ActionGrant",
    "AuditEvent",
    "AuditSinkCursor",
    "Backend",
    "Base",
    "Campaign",
    "CampaignRecipient",
    "CampaignStatus",
    "FederatedIdentity",
    "Flow",
    "FlowPurpose",
    "FlowStatus",
    "LoginFailures",
    "MessageStatus",
    "Organization",
    "OutboxMessage",
    "PasskeyCeremony",
    "PasskeyCredential",
    "ReadinessDay",
    "Receipt",
    "RecipientStatus",
    "Relay",
    "RelayMember",
    "Role",
    "SecondFactor",
    "SendBreaker",
    "SendBudget",
    "ServiceAccess",
    "Session",
    "TrustedDevice",
    "UsedAssertion",
]

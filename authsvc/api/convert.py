"""Protobuf <-> domain values that several servicers share."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from authsvc import audit, validation
from authsvc.db import Role
from authsvc.errors import invalid_field
from authsvc.flows.login import ClientInfo
from authsvc.flows.views import IssuedSession, PendingFlowView
from authsvc.policies.permissions import Action
from authsvc.v1 import common_pb2, factor_service_pb2

FACTOR_KIND_TO_PB = {
    "totp": factor_service_pb2.FACTOR_KIND_TOTP,
    "passkey": factor_service_pb2.FACTOR_KIND_PASSKEY,
}
CHANNEL_TO_PB = {
    "sms": common_pb2.CHANNEL_SMS,
    "voice": common_pb2.CHANNEL_VOICE,
    "email": common_pb2.CHANNEL_EMAIL,
    "totp": common_pb2.CHANNEL_TOTP,
    "passkey": common_pb2.CHANNEL_PASSKEY,
}
CHANNEL_FROM_PB: dict[int, str] = {int(value): name for name, value in CHANNEL_TO_PB.items()}
DELIVERY_TO_PB = {
    "none": common_pb2.DELIVERY_STATUS_UNSPECIFIED,  # nothing is delivered (CHANNEL_TOTP)
    "queued": common_pb2.DELIVERY_STATUS_QUEUED,
    "sent": common_pb2.DELIVERY_STATUS_SENT,
    "failed": common_pb2.DELIVERY_STATUS_FAILED,
    "delivered": common_pb2.DELIVERY_STATUS_DELIVERED,
    "undelivered": common_pb2.DELIVERY_STATUS_UNDELIVERED,
}
PURPOSE_TO_PB = {
    "login": common_pb2.FLOW_PURPOSE_LOGIN,
    "step_up": common_pb2.FLOW_PURPOSE_STEP_UP,
    "contact_verification": common_pb2.FLOW_PURPOSE_CONTACT_VERIFICATION,
    "federated_link": common_pb2.FLOW_PURPOSE_FEDERATED_LINK,
    "federated_unlink": common_pb2.FLOW_PURPOSE_FEDERATED_UNLINK,
}
ROLE_TO_PB = {"admin": common_pb2.ROLE_ADMIN, "member": common_pb2.ROLE_MEMBER}
ROLE_FROM_PB: dict[int, Role] = {
    int(common_pb2.ROLE_ADMIN): Role.ADMIN,
    int(common_pb2.ROLE_MEMBER): Role.MEMBER,
}
ACTION_TO_PB = {
    Action.CREATE_ACCOUNT: common_pb2.SENSITIVE_ACTION_CREATE_ACCOUNT,
    Action.UPDATE_ACCOUNT_CONTACT: common_pb2.SENSITIVE_ACTION_UPDATE_ACCOUNT_CONTACT,
    Action.GRANT_SERVICE_ACCESS: common_pb2.SENSITIVE_ACTION_GRANT_SERVICE_ACCESS,
    Action.UPDATE_OWN_CONTACT: common_pb2.SENSITIVE_ACTION_UPDATE_OWN_CONTACT,
    Action.CHANGE_OWN_PASSWORD: common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
    Action.ADD_RELAY_MEMBERS: common_pb2.SENSITIVE_ACTION_ADD_RELAY_MEMBERS,
    Action.REMOVE_RELAY_MEMBERS: common_pb2.SENSITIVE_ACTION_REMOVE_RELAY_MEMBERS,
    Action.START_READINESS_CAMPAIGN: common_pb2.SENSITIVE_ACTION_START_READINESS_CAMPAIGN,
    Action.ENROLL_FACTOR: common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR,
    Action.REMOVE_FACTOR: common_pb2.SENSITIVE_ACTION_REMOVE_FACTOR,
}
ACTION_FROM_PB: dict[int, Action] = {int(value): action for action, value in ACTION_TO_PB.items()}
MAX_SERVICE_CODES = 64
AAL_TO_PB = {"aal1": common_pb2.ASSURANCE_LEVEL_AAL1, "aal2": common_pb2.ASSURANCE_LEVEL_AAL2}


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def channel_from_pb(value: int, field: str = "channel") -> str | None:
    if value == common_pb2.CHANNEL_UNSPECIFIED:
        return None
    try:
        return CHANNEL_FROM_PB[value]
    except KeyError:
        raise invalid_field(field, "unknown channel") from None


def role_from_pb(value: int, field: str) -> Role | None:
    if value == common_pb2.ROLE_UNSPECIFIED:
        return None
    try:
        return ROLE_FROM_PB[value]
    except KeyError:
        raise invalid_field(field, "unknown role") from None


def action_from_pb(value: int, field: str = "action") -> Action:
    try:
        return ACTION_FROM_PB[value]
    except KeyError:
        raise invalid_field(field, "unknown or missing sensitive action") from None


def service_codes(codes: Sequence[str], field: str) -> list[str]:
    if len(codes) > MAX_SERVICE_CODES or any(len(code) > 64 for code in codes):
        raise invalid_field(field, f"at most {MAX_SERVICE_CODES} codes of 64 characters")
    return list(codes)


def scoped_idempotency_key(backend: str, key: str | None) -> str | None:
    """The key as the calling backend's own (common to its calls, apart from every other
    backend's): a digest of (backend, key), so two backends that pick the same key never get
    each other's challenge, and no client-chosen text is kept in the flow row."""
    if key is None:
        return None
    return hashlib.sha256(f"{backend}\x1f{key}".encode()).hexdigest()


def client_info(client: common_pb2.ClientContext, *, ip_required: bool = False) -> ClientInfo:
    ip_address = validation.ip_address(client.ip_address)
    audit.set_ip_address(ip_address)
    if ip_required and not ip_address:
        raise invalid_field("client.ip_address", "the end user's IP address is required")
    return ClientInfo(ip_address=ip_address, user_agent=validation.user_agent(client.user_agent))


def pending_flow(view: PendingFlowView) -> common_pb2.PendingFlow:
    return common_pb2.PendingFlow(
        flow_id=str(view.flow_id),
        purpose=PURPOSE_TO_PB[view.purpose.value],
        channels=[CHANNEL_TO_PB[channel] for channel in view.channels],
        default_channel=CHANNEL_TO_PB[view.default_channel],
        masked_destination=view.masked_destination,
        expire_time=timestamp(view.expires_at),
    )


def session(view: IssuedSession) -> common_pb2.Session:
    return common_pb2.Session(
        token=view.token,
        account_id=str(view.account_id),
        assurance_level=AAL_TO_PB[view.assurance_level],
        expire_time=timestamp(view.expires_at),
        idle_expire_time=timestamp(view.idle_expires_at),
    )

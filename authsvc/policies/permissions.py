"""Who may ask for which sensitive action, on which account.

Administrators act only inside their own organisation; a member acts only on their own account.
A target outside the caller's organisation gets the same answer as a target that does not exist,
so account ids of other organisations cannot be probed.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Protocol

from authsvc.db import AccountStatus, Role
from authsvc.errors import Failure


class Action(StrEnum):
    CREATE_ACCOUNT = "create_account"
    UPDATE_ACCOUNT_CONTACT = "update_account_contact"
    GRANT_SERVICE_ACCESS = "grant_service_access"
    UPDATE_OWN_CONTACT = "update_own_contact"
    CHANGE_OWN_PASSWORD = "change_own_password"  # noqa: S105 (an action name)
    # A relay's administrator changes the relay's members (campaigns/relays.py).
    ADD_RELAY_MEMBERS = "add_relay_members"
    REMOVE_RELAY_MEMBERS = "remove_relay_members"
    # An administrator emails every not-ready account of their organisation, or of the relay's
    # members (campaigns/campaign.py).
    START_READINESS_CAMPAIGN = "start_readiness_campaign"
    # Second factors (accounts/factors.py): enrolling one on the own account; removing one,
    # the holder's own or, for an administrator, a member's of the same organisation.
    ENROLL_FACTOR = "enroll_factor"
    REMOVE_FACTOR = "remove_factor"


ADMIN_ACTIONS = frozenset(
    {Action.CREATE_ACCOUNT, Action.UPDATE_ACCOUNT_CONTACT, Action.GRANT_SERVICE_ACCESS}
)
# Administrators' actions on their organisation as a whole: no target account.
ORGANIZATION_ACTIONS = frozenset(
    {Action.ADD_RELAY_MEMBERS, Action.REMOVE_RELAY_MEMBERS, Action.START_READINESS_CAMPAIGN}
)
OWN_ACTIONS = frozenset(
    {Action.UPDATE_OWN_CONTACT, Action.CHANGE_OWN_PASSWORD, Action.ENROLL_FACTOR}
)


def denied(message: str = "not allowed") -> Failure:
    return Failure("PERMISSION_DENIED", "PERMISSION_DENIED", message)


def require_admin(role: Role) -> None:
    if role != Role.ADMIN:
        raise denied("an administrator's action")


class TargetAccount(Protocol):
    """The target's columns a permission looks at (an ORM row or a hot path's Core row)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def organization_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...


def check_target(
    action: Action,
    *,
    caller_id: uuid.UUID,
    caller_role: Role,
    caller_organization: uuid.UUID,
    target: TargetAccount | None,
) -> uuid.UUID | None:
    """The target account id the action applies to (None for CREATE_ACCOUNT), or refuse."""
    if action is Action.REMOVE_FACTOR and (target is None or target.id == caller_id):
        return caller_id  # the holder's own factor; a member's is an administrator's action
    if action in OWN_ACTIONS:
        if target is not None and target.id != caller_id:
            raise denied("this action applies to your own account only")
        return caller_id
    require_admin(caller_role)
    if action in ORGANIZATION_ACTIONS:
        if target is not None:
            raise denied("this action applies to your organisation, not to an account")
        return None
    if action is Action.CREATE_ACCOUNT:
        if target is not None:
            raise denied("an account to create has no target")
        return None
    if target is None or target.organization_id != caller_organization:
        raise denied("no such account in your organisation")
    if target.id == caller_id:
        raise denied("use the own-account action for your own account")
    if target.status == AccountStatus.DISABLED:
        raise denied("this account is disabled")
    return target.id

"""Account administration: creation and activation, contacts, passwords, service access,
the organisation's administrators and readiness, the audit trail."""

from authsvc.accounts.creation import create_account, create_organization

__all__ = ["create_account", "create_organization"]

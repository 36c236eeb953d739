"""Where a flow's code goes: the account's phone, or the new contact being verified."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, select

from authsvc.app import App
from authsvc.config import Settings
from authsvc.db import Account, Flow, FlowPurpose
from authsvc.db.statements import factors
from authsvc.db.statements.flows import AccountRow, FlowRow
from authsvc.flows import failures
from authsvc.phones import CHANNELS_BY_KIND, PhoneKind


@dataclass(frozen=True)
class Destination:
    channels: tuple[str, ...]  # the first is the default
    masked: str


class PhoneOnFile(Protocol):
    """An account's phone as shown (an ORM row, or the columns a hot path read)."""

    @property
    def phone_kind(self) -> str | None: ...
    @property
    def phone_masked(self) -> str | None: ...


class HasFactors(Protocol):
    """What a lookup read of an account's second factors beside its phone."""

    @property
    def has_totp(self) -> bool: ...
    @property
    def has_passkey(self) -> bool: ...


@dataclass(frozen=True)
class OtherFactors:
    """An account's second factors beside its phone, read apart (factors.other_factors)."""

    has_totp: bool
    has_passkey: bool


async def other_factors(app: App, account_id: uuid.UUID) -> OtherFactors:
    """The account's factors beside its phone, for the paths whose lookup did not read them."""
    return await app.db.read(_read_other_factors, account_id)


def _read_other_factors(connection: Connection, account_id: uuid.UUID) -> OtherFactors:
    totp, passkey = connection.execute(select(*factors.other_factors(account_id))).one()
    return OtherFactors(has_totp=bool(totp), has_passkey=bool(passkey))


def factor_channels(settings: Settings, account: HasFactors) -> tuple[str, ...]:
    """The channels of the account's other factors, as a flow lists them after its phone's:
    its authenticator app, then its passkeys (only where this server has passkeys configured:
    elsewhere PasskeyService answers NOT_IMPLEMENTED, and a listed channel must be usable)."""
    channels: tuple[str, ...] = ()
    if account.has_totp:
        channels += ("totp",)
    if account.has_passkey and settings.webauthn_origins:
        channels += ("passkey",)
    return channels


def account_phone(account: PhoneOnFile, others: tuple[str, ...] = ()) -> Destination:
    """The account's phone channels, then its other factors' (`factor_channels`). The phone
    stays the default and the rule: an account without one is not ready, whatever other
    factor it has."""
    if account.phone_kind is None or account.phone_masked is None:
        raise failures.account_not_ready()
    channels = CHANNELS_BY_KIND[PhoneKind(account.phone_kind)]
    return Destination((*channels, *others), account.phone_masked)


def of_flow(
    flow: Flow | FlowRow, account: PhoneOnFile, others: tuple[str, ...] = ()
) -> Destination:
    """Where the flow's code can go. A contact being verified proves that contact: only its
    own channels. Every other flow takes the account's second factors (`others`: their
    channels beside the phone's)."""
    if flow.purpose == FlowPurpose.CONTACT_VERIFICATION:
        assert flow.contact_kind is not None and flow.contact_masked is not None
        if flow.contact_kind == "email":
            return Destination(("email",), flow.contact_masked)
        return Destination(CHANNELS_BY_KIND[PhoneKind(flow.contact_kind)], flow.contact_masked)
    return account_phone(account, others)


def address(app: App, flow: Flow | FlowRow, account: Account | AccountRow) -> str:
    """The full address, unsealed only at the moment a message is queued."""
    if flow.purpose == FlowPurpose.CONTACT_VERIFICATION:
        assert flow.contact_sealed is not None
        return app.keys.sealer.open(flow.contact_sealed, flow.id.bytes)
    assert account.phone_sealed is not None
    return app.keys.sealer.open(account.phone_sealed, account.id.bytes)


def unverified_requester(flow: Flow | FlowRow) -> str | None:
    """Who pays for a code to a destination not yet verified for the account, or None.

    A contact being changed is whatever number the requester typed: its codes are charged to
    the requester (policies/ratelimit.py), never to that number's caps or its prefix's breaker,
    which protect the logins of the number's holder. Every other flow's code goes to the
    account's own phone.
    """
    if flow.purpose == FlowPurpose.CONTACT_VERIFICATION:
        return str(flow.account_id)
    return None

"""Passkeys (WebAuthn credentials) and the ceremonies that register and use them.

A credential row keeps what verifying its assertions needs: the credential id the browser
names it by (unique across the service: an authenticator answers for one account only), its
COSE public key and the last signature counter accepted. None of it is a secret (a public key
proves nothing without the private key held by the authenticator), so nothing is sealed.

A ceremony row is the challenge of one registration or assertion in progress, drawn by the
service and kept here, never trusted from the browser: it is bound to its account (and, for an
assertion, to its flow, its id being the flow's current challenge id), expires, and is used at
most once: one conditional DELETE takes it and returns the challenge (a used ceremony leaves
no row behind; an unanswered one is replaced by its account's next ceremony of the kind, and
expired ones go when the account starts another: db/statements/passkeys.py).

A credential whose signature counter went back (a clone of its private key exists) is disabled
(`disabled_at`), not deleted: it answers no flow any more, its holder sees it disabled in
ListFactors and removes it, and its credential id stays taken (the copy cannot register it
again).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class PasskeyCredential(Base):
    __tablename__ = "passkey_credentials"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(1023), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(1024))
    sign_count: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(64))
    # The transports the authenticator reported ("internal", "usb", ...), comma-separated: a
    # hint handed back to the browser in the assertion's allowCredentials.
    transports: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    # Set when a clone was detected (flows/passkey.py): the credential satisfies nothing since.
    disabled_at: Mapped[datetime | None]


class PasskeyCeremony(Base):
    __tablename__ = "passkey_ceremonies"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    # The login or step-up flow an assertion answers; NULL for a registration.
    flow_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "registration" or "assertion"
    challenge: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]

"""Second factors besides the phone: one row per authenticator an account holds.

`kind` says what the row is ('totp' today; a passkey would be another kind beside it, with its
own columns for the credential id, public key and sign counter). The TOTP secret is sealed at
rest (AES-256-GCM, bound to the row's id, like the phone number to its account's): a copy of the
database alone gives no code. A factor counts only once `confirmed_at` is set, i.e. once its
holder proved one code from it. `last_used_step` is the last accepted TOTP time step: a step at
or before it is never accepted again (one conditional UPDATE advances it).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class SecondFactor(Base):
    __tablename__ = "second_factors"
    # At most one confirmed authenticator app per account, decided by the database (two
    # concurrent confirmations cannot both win). Other kinds (passkeys) may be several.
    __table_args__ = (
        Index(
            "uq_second_factors_one_totp",
            "account_id",
            unique=True,
            postgresql_where=text("kind = 'totp' AND confirmed_at IS NOT NULL"),
            sqlite_where=text("kind = 'totp' AND confirmed_at IS NOT NULL"),
        ),
        # At most one pending enrolment per account: a new one replaces it (factors.begin_totp),
        # and two concurrent ones cannot both stay.
        Index(
            "uq_second_factors_one_pending_totp",
            "account_id",
            unique=True,
            postgresql_where=text("kind = 'totp' AND confirmed_at IS NULL"),
            sqlite_where=text("kind = 'totp' AND confirmed_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary(128))
    confirmed_at: Mapped[datetime | None]
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]

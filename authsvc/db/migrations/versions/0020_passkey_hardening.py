"""Passkeys after the attack review: a cloned credential is disabled, a used ceremony is
deleted, and an account holds at most one pending authenticator-app enrolment

- passkey_credentials.disabled_at: set when the signature counter went back (a clone).
- passkey_ceremonies.consumed_at goes: taking a ceremony deletes it (rows consumed before this
  revision are deleted here).
- second_factors: a partial unique index allows one pending TOTP enrolment per account (older
  duplicates, possible under concurrent enrolments, are deleted: the latest stays).

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = "kind = 'totp' AND confirmed_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("passkey_credentials") as batch:
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("DELETE FROM passkey_ceremonies WHERE consumed_at IS NOT NULL")
    with op.batch_alter_table("passkey_ceremonies") as batch:
        batch.drop_column("consumed_at")
    # Keep each account's latest pending enrolment (only the latest could be confirmed anyway).
    op.execute(
        "DELETE FROM second_factors WHERE kind = 'totp' AND confirmed_at IS NULL AND EXISTS ("
        "SELECT 1 FROM second_factors AS later WHERE later.account_id = second_factors.account_id"
        " AND later.kind = 'totp' AND later.confirmed_at IS NULL"
        " AND (later.created_at > second_factors.created_at"
        " OR (later.created_at = second_factors.created_at AND later.id > second_factors.id)))"
    )
    op.create_index(
        "uq_second_factors_one_pending_totp",
        "second_factors",
        ["account_id"],
        unique=True,
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )


def downgrade() -> None:
    op.drop_index("uq_second_factors_one_pending_totp", table_name="second_factors")
    with op.batch_alter_table("passkey_ceremonies") as batch:
        batch.add_column(sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("passkey_credentials") as batch:
        batch.drop_column("disabled_at")

"""second_factors: TOTP authenticators (and, beside them later, other kinds of factor)

Revision ID: 0017
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "second_factors",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(length=128), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_step", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_second_factors_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_second_factors")),
    )
    with op.batch_alter_table("second_factors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_second_factors_account_id"), ["account_id"], unique=False
        )
    # One confirmed authenticator app per account (partial unique index, both backends).
    only_confirmed_totp = sa.text("kind = 'totp' AND confirmed_at IS NOT NULL")
    op.create_index(
        "uq_second_factors_one_totp",
        "second_factors",
        ["account_id"],
        unique=True,
        postgresql_where=only_confirmed_totp,
        sqlite_where=only_confirmed_totp,
    )


def downgrade() -> None:
    op.drop_index("uq_second_factors_one_totp", table_name="second_factors")
    with op.batch_alter_table("second_factors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_second_factors_account_id"))
    op.drop_table("second_factors")

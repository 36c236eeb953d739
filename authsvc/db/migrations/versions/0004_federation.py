"""federation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "used_assertions",
        sa.Column("issuer", sa.String(length=256), nullable=False),
        sa.Column("jti", sa.String(length=256), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name=op.f("pk_used_assertions")),
    )
    with op.batch_alter_table("used_assertions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_used_assertions_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "federated_identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("issuer", sa.String(length=256), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_federated_identities_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_identities")),
        sa.UniqueConstraint(
            "account_id", "issuer", name=op.f("uq_federated_identities_account_id")
        ),
        sa.UniqueConstraint("issuer", "subject", name=op.f("uq_federated_identities_issuer")),
    )
    with op.batch_alter_table("federated_identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_federated_identities_account_id"), ["account_id"], unique=False
        )

    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("federated_issuer", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("federated_subject", sa.String(length=256), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_column("federated_subject")
        batch_op.drop_column("federated_issuer")

    with op.batch_alter_table("federated_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federated_identities_account_id"))

    op.drop_table("federated_identities")
    with op.batch_alter_table("used_assertions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_assertions_expires_at"))

    op.drop_table("used_assertions")

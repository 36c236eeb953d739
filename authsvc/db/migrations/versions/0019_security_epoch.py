"""accounts.security_epoch: raised by every change that ends an account's sessions

A password change, a phone change (and any later change that revokes sessions and device
trust) raises it on the account row, first in its transaction. A login whose first factor was
checked against the state before the change compares it in its verdict and writes neither a
session nor a flow (statements/logins.py).

Revision ID: 0019
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("security_epoch", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("security_epoch")

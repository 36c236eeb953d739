"""lockouts: password checks reserved before argon2, wrong codes over a fixed window

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pending_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("password_checks_pending", sa.Integer(), server_default="0", nullable=False),
        sa.Column("password_pending_until", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        for column in _pending_columns():
            batch_op.add_column(column)
        batch_op.add_column(
            sa.Column("code_window_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("code_window_started_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("code_failures_notified_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        for column in _pending_columns():
            batch_op.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_column("password_pending_until")
        batch_op.drop_column("password_checks_pending")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("code_failures_notified_at")
        batch_op.drop_column("code_window_started_at")
        batch_op.drop_column("code_window_failures")
        batch_op.drop_column("password_pending_until")
        batch_op.drop_column("password_checks_pending")

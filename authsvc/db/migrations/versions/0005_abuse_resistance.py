"""abuse resistance: lockout counters (accounts, unknown logins), backends, pumping breakers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failed_password_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("password_lock_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("password_locked_until", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("failed_code_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("code_locked_until", sa.DateTime(timezone=True), nullable=True)
        )

    op.create_table(
        "backends",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_digest", sa.LargeBinary(length=32), nullable=True),
        sa.Column("rpcs", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_backends")),
        sa.UniqueConstraint("key_digest", name=op.f("uq_backends_key_digest")),
    )
    op.create_table(
        "send_breakers",
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("tripped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("open_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trips", sa.Integer(), nullable=False),
        sa.Column("reset_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("prefix", name=op.f("pk_send_breakers")),
    )
    op.create_table(
        "login_failures",
        sa.Column("key_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("failed_password_count", sa.Integer(), nullable=False),
        sa.Column("password_lock_count", sa.Integer(), nullable=False),
        sa.Column("password_locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_digest", name=op.f("pk_login_failures")),
    )


def downgrade() -> None:
    op.drop_table("login_failures")
    op.drop_table("send_breakers")
    op.drop_table("backends")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("code_locked_until")
        batch_op.drop_column("failed_code_count")
        batch_op.drop_column("password_locked_until")
        batch_op.drop_column("password_lock_count")
        batch_op.drop_column("failed_password_count")

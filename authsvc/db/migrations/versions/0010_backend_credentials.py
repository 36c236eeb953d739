"""backends: which credentials each backend accepts (api key, mTLS certificate, or both)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backends", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("credentials", sa.String(length=8), server_default="key", nullable=False)
        )
    # What each existing row meant: a key backend took its key only (and, through a bug, any
    # certificate of its name); a keyless one was an mTLS client.
    op.execute("UPDATE backends SET credentials = 'mtls' WHERE key_digest IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("backends", schema=None) as batch_op:
        batch_op.drop_column("credentials")

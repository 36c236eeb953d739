"""outbox: delivery receipts (delivered / undelivered) and the provider that accepted a message

`status` keeps its width (16): the new values are `delivered` and `undelivered`. `receipt` is the
last receipt's word, `receipt_at` when it came, `provider` the name of the provider that accepted
the message.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("receipt", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("receipt_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # A delivered or undelivered message was sent: that is what the older schema knows of it.
    op.execute(
        "UPDATE outbox_messages SET status = 'sent' WHERE status IN ('delivered', 'undelivered')"
    )
    with op.batch_alter_table("outbox_messages") as batch:
        batch.drop_column("receipt_at")
        batch.drop_column("receipt")
        batch.drop_column("provider")

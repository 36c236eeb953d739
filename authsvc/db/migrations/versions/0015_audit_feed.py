"""audit feed: the writer's transaction id on every audit row, and the webhook sinks' cursors

`audit_events.txid` is PostgreSQL's pg_current_xact_id() of the transaction that wrote the row
(its server default; 0 for older rows and always on SQLite, whose writers are serialised). The
export reads rows in (txid, sequence) order and only below the oldest transaction still running,
so a row committed late can never land behind a cursor that already moved past its sequence
(statements/audit_feed.py). `audit_sink_cursors` holds, per sink and organisation, the position
of the last delivered event and the lease of the dispatcher delivering the next ones.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# xid8 has no cast to bigint; through text it is exact (a 64-bit counter that never wraps).
PG_TXID = "(pg_current_xact_id()::text::bigint)"


_INDEXES = {
    "ix_audit_events_feed": ["txid", "sequence"],
    "ix_audit_events_org_feed": ["organization_id", "txid", "sequence"],
}


def _feed_indexes() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name, columns in _INDEXES.items():
            op.create_index(name, "audit_events", columns)
        return
    # CONCURRENTLY, outside the migration's transaction: a long audit trail is indexed while
    # the hot paths go on appending to it (a plain CREATE INDEX would block their INSERTs).
    with op.get_context().autocommit_block():
        for name, columns in _INDEXES.items():
            op.create_index(name, "audit_events", columns, postgresql_concurrently=True)


def upgrade() -> None:
    # op.add_column, not batch mode: SQLite adds a column in place, keeping the table's
    # append-only triggers (a batch "move and copy" would drop them).
    op.add_column(
        "audit_events",
        sa.Column("txid", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Existing rows keep 0 (all committed); new ones get their transaction's id.
        op.execute(f"ALTER TABLE audit_events ALTER COLUMN txid SET DEFAULT {PG_TXID}")
    _feed_indexes()
    op.create_table(
        "audit_sink_cursors",
        sa.Column("sink", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("last_txid", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("sink", "organization_id", name=op.f("pk_audit_sink_cursors")),
    )


def downgrade() -> None:
    op.drop_table("audit_sink_cursors")
    op.drop_index("ix_audit_events_org_feed", table_name="audit_events")
    op.drop_index("ix_audit_events_feed", table_name="audit_events")
    # SQLite (3.35+) drops a column in place too; its triggers do not name the column.
    op.drop_column("audit_events", "txid")

"""step-up grants, service access, audit trail

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The audit trail is append-only: the database itself refuses to change or delete an event.
_PG_APPEND_ONLY = [
    "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$",
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
]
_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
]


def _append_only() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_APPEND_ONLY if postgres else _SQLITE_APPEND_ONLY:
        op.execute(statement)


def upgrade() -> None:

    op.create_table(
        "audit_events",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=False),
        sa.Column("actor_account_id", sa.Uuid(), nullable=True),
        sa.Column("target_account_id", sa.Uuid(), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_events_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_org_seq", ["organization_id", "sequence"], unique=False
        )

    op.create_table(
        "service_access",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("service_code", sa.String(length=64), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_by", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_service_access_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["granted_by"], ["accounts.id"], name=op.f("fk_service_access_granted_by_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", "service_code", name=op.f("pk_service_access")),
    )
    op.create_table(
        "action_grants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("flow_id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target_account_id", sa.Uuid(), nullable=True),
        sa.Column("values_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_action_grants_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["flow_id"], ["flows.id"], name=op.f("fk_action_grants_flow_id_flows")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_action_grants_session_id_sessions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_grants")),
        sa.UniqueConstraint("flow_id", name=op.f("uq_action_grants_flow_id")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_action_grants_token_digest")),
    )
    with op.batch_alter_table("action_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_action_grants_account_id"), ["account_id"], unique=False
        )

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("phone_verified_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("activation_token_digest", sa.LargeBinary(length=32), nullable=True)
        )
        batch_op.add_column(
            sa.Column("activation_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.alter_column("phone_sealed", existing_type=sa.LargeBinary(), nullable=True)
        batch_op.alter_column("phone_digest", existing_type=sa.LargeBinary(), nullable=True)
        batch_op.alter_column("phone_masked", existing_type=sa.VARCHAR(length=32), nullable=True)
        batch_op.alter_column("phone_kind", existing_type=sa.VARCHAR(length=16), nullable=True)
        batch_op.alter_column("phone_region", existing_type=sa.VARCHAR(length=2), nullable=True)
        batch_op.create_unique_constraint(
            batch_op.f("uq_accounts_activation_token_digest"), ["activation_token_digest"]
        )

    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("action", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("target_account_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("values_digest", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("contact_kind", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("contact_sealed", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("contact_masked", sa.String(length=320), nullable=True))

    _append_only()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_update ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")

    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_column("contact_masked")
        batch_op.drop_column("contact_sealed")
        batch_op.drop_column("contact_kind")
        batch_op.drop_column("values_digest")
        batch_op.drop_column("target_account_id")
        batch_op.drop_column("action")
        batch_op.drop_column("session_id")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_accounts_activation_token_digest"), type_="unique")
        batch_op.alter_column("phone_region", existing_type=sa.VARCHAR(length=2), nullable=False)
        batch_op.alter_column("phone_kind", existing_type=sa.VARCHAR(length=16), nullable=False)
        batch_op.alter_column("phone_masked", existing_type=sa.VARCHAR(length=32), nullable=False)
        batch_op.alter_column("phone_digest", existing_type=sa.LargeBinary(), nullable=False)
        batch_op.alter_column("phone_sealed", existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column("activation_expires_at")
        batch_op.drop_column("activation_token_digest")
        batch_op.drop_column("phone_verified_at")

    with op.batch_alter_table("action_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_action_grants_account_id"))

    op.drop_table("action_grants")
    op.drop_table("service_access")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_org_seq")

    op.drop_table("audit_events")

"""relays (centres de gestion), readiness campaigns, send budgets, daily readiness

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relays",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("designated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_relays_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_relays")),
    )
    op.create_table(
        "relay_members",
        sa.Column("relay_id", sa.Uuid(), nullable=False),
        sa.Column("member_id", sa.Uuid(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["organizations.id"],
            name=op.f("fk_relay_members_member_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["relay_id"],
            ["relays.organization_id"],
            name=op.f("fk_relay_members_relay_id_relays"),
        ),
        sa.PrimaryKeyConstraint("relay_id", "member_id", name=op.f("pk_relay_members")),
    )
    op.create_index(
        op.f("ix_relay_members_member_id"), "relay_members", ["member_id"], unique=False
    )
    op.create_table(
        "readiness_campaigns",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("started_by", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reminder_interval_s", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_readiness_campaigns_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["started_by"],
            ["accounts.id"],
            name=op.f("fk_readiness_campaigns_started_by_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_readiness_campaigns")),
    )
    op.create_index(
        op.f("ix_readiness_campaigns_organization_id"),
        "readiness_campaigns",
        ["organization_id"],
        unique=False,
    )
    op.create_table(
        "campaign_recipients",
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("next_send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_message_id", sa.Uuid(), nullable=True),
        sa.Column("link_digest", sa.LargeBinary(length=32), nullable=True),
        sa.Column("link_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("link_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_campaign_recipients_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["readiness_campaigns.id"],
            name=op.f("fk_campaign_recipients_campaign_id_readiness_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_campaign_recipients_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("campaign_id", "account_id", name=op.f("pk_campaign_recipients")),
        sa.UniqueConstraint("link_digest", name=op.f("uq_campaign_recipients_link_digest")),
    )
    op.create_index(
        "ix_campaign_recipients_due",
        "campaign_recipients",
        ["status", "next_send_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_campaign_recipients_last_message_id"),
        "campaign_recipients",
        ["last_message_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_campaign_recipients_organization_id"),
        "campaign_recipients",
        ["organization_id"],
        unique=False,
    )
    op.create_table(
        "send_budgets",
        sa.Column("budget", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent", sa.Integer(), nullable=False),
        sa.Column("last_claim", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("budget", "window_start", name=op.f("pk_send_budgets")),
    )
    op.create_table(
        "readiness_days",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("accounts_total", sa.Integer(), nullable=False),
        sa.Column("ready", sa.Integer(), nullable=False),
        sa.Column("no_phone", sa.Integer(), nullable=False),
        sa.Column("invalid_phone", sa.Integer(), nullable=False),
        sa.Column("phone_unverified", sa.Integer(), nullable=False),
        sa.Column("pending_activation", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_readiness_days_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "day", name=op.f("pk_readiness_days")),
    )


def downgrade() -> None:
    op.drop_table("readiness_days")
    op.drop_table("send_budgets")
    op.drop_index(op.f("ix_campaign_recipients_organization_id"), table_name="campaign_recipients")
    op.drop_index(op.f("ix_campaign_recipients_last_message_id"), table_name="campaign_recipients")
    op.drop_index("ix_campaign_recipients_due", table_name="campaign_recipients")
    op.drop_table("campaign_recipients")
    op.drop_index(op.f("ix_readiness_campaigns_organization_id"), table_name="readiness_campaigns")
    op.drop_table("readiness_campaigns")
    op.drop_index(op.f("ix_relay_members_member_id"), table_name="relay_members")
    op.drop_table("relay_members")
    op.drop_table("relays")

"""alerts: rules and alerts

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tz(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column(
            "target",
            sa.String(length=64),
            nullable=False,
            comment="the meter key, the currency (spend), or the operational condition",
        ),
        sa.Column("subject", sa.String(length=256), nullable=True),
        sa.Column(
            "spec",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="RuleSpec JSON (exact decimals)",
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_alert_rules_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("id", name=op.f("uq_alert_rules_id")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=35), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("rule_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("condition", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=True),
        sa.Column("dedupe", sa.String(length=1024), nullable=False),
        _tz("period_start"),
        _tz("period_end"),
        sa.Column("threshold", sa.Numeric(), nullable=True),
        sa.Column("value", sa.Numeric(), nullable=True),
        sa.Column("unit", sa.String(length=32), nullable=True),
        sa.Column("about_type", sa.String(length=32), nullable=False),
        sa.Column("about_id", sa.String(length=512), nullable=False),
        sa.Column("about_href", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "state",
            sa.String(length=16),
            nullable=False,
            comment="firing | acknowledged | resolved",
        ),
        _tz("raised_at", nullable=False),
        _tz("acknowledged_at"),
        _tz("resolved_at"),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_alerts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("tenant_id", "rule_id", "dedupe", name="uq_alerts_once"),
    )
    op.create_index("ix_alerts_tenant_state", "alerts", ["tenant_id", "state", "raised_at"])
    op.create_index("ix_alerts_about", "alerts", ["tenant_id", "about_type", "about_id"])
    op.create_index(
        "ix_alerts_open_periods",
        "alerts",
        ["period_end"],
        postgresql_where=sa.text("state <> 'resolved'"),
    )


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("alert_rules")

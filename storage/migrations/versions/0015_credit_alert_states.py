"""credit balance alerts: which thresholds each (rule, customer) is below, and how many
times it crossed each (a crossing's alert is unique by that count)

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


def upgrade() -> None:
    op.create_table(
        "alert_credit_states",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column(
            "subject", sa.String(length=256), nullable=False, comment="the customer's external id"
        ),
        sa.Column("threshold", sa.BigInteger(), nullable=False, comment="minor units"),
        sa.Column("below", sa.Boolean(), nullable=False, comment="alerted, not re-armed yet"),
        sa.Column("crossings", sa.Integer(), nullable=False, comment="downward crossings so far"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_alert_credit_states_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name=op.f("fk_alert_credit_states_rule_id_alert_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "rule_id", "subject", "threshold", name=op.f("pk_alert_credit_states")
        ),
    )


def downgrade() -> None:
    op.drop_table("alert_credit_states")

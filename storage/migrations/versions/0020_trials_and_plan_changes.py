"""trials and immediate plan changes: a subscription's trial, the share of the flat fees its
current period bills, invoices whose usage is shown but not billed, and how long before a
trial's end each tenant is told

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("trial_end", sa.DateTime(timezone=True)))
    op.add_column(
        "subscriptions",
        sa.Column("trial_end_behavior", sa.String(16), server_default="convert", nullable=False),
    )
    op.add_column(
        "subscriptions",
        sa.Column("bill_trial_usage", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column(
        "subscriptions", sa.Column("trial_will_end_sent_at", sa.DateTime(timezone=True))
    )
    op.add_column(
        "subscriptions",
        sa.Column(
            "period_proration", sa.Numeric(), server_default="1", nullable=False,
            comment="share of the flat fees the current period bills",
        ),
    )  # fmt: skip
    # the trial_will_end job's scan: live trials not told yet
    op.create_index(
        "ix_subscriptions_trial_will_end",
        "subscriptions",
        ["trial_end"],
        postgresql_where=sa.text(
            "status = 'active' AND trial_end IS NOT NULL AND trial_will_end_sent_at IS NULL"
        ),
    )
    op.add_column(
        "invoices",
        sa.Column(
            "usage_billed", sa.Boolean(), server_default="true", nullable=False,
            comment="false: a trial's usage, shown at 0",
        ),
    )  # fmt: skip
    op.add_column(
        "invoicing_configs",
        sa.Column("trial_will_end_days", sa.Integer(), server_default="3", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("invoicing_configs", "trial_will_end_days")
    op.drop_column("invoices", "usage_billed")
    op.drop_index("ix_subscriptions_trial_will_end", table_name="subscriptions")
    for column in (
        "period_proration", "trial_will_end_sent_at", "bill_trial_usage", "trial_end_behavior",
        "trial_end",
    ):  # fmt: skip
        op.drop_column("subscriptions", column)

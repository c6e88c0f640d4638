"""late usage of ended subscriptions: when each ended subscription's late-usage invoice was
drafted, and how long after the end each tenant waits for it

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "subscriptions",
        sa.Column(
            "late_usage_checked_at", sa.DateTime(timezone=True), nullable=True,
            comment="ended: when its late-usage invoice was drafted",
        ),
    )  # fmt: skip
    # subscriptions that ended before this release are not billed again for late usage
    op.execute("UPDATE subscriptions SET late_usage_checked_at = now() WHERE status = 'ended'")
    op.create_index(
        "ix_subscriptions_late_usage",
        "subscriptions",
        ["ended_at"],
        postgresql_where=sa.text("status = 'ended' AND late_usage_checked_at IS NULL"),
    )
    op.add_column(
        "invoicing_configs",
        sa.Column("late_usage_grace_hours", sa.Integer(), server_default="72", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("invoicing_configs", "late_usage_grace_hours")
    op.drop_index("ix_subscriptions_late_usage", table_name="subscriptions")
    op.drop_column("subscriptions", "late_usage_checked_at")

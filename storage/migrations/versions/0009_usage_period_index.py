"""usage: an index on (tenant, meter, subject, bucket) for period totals

The primary key puts the group values before the hour, so a period's total for one subject
read every hour the subject ever had on the meter; invoicing and alerts read period totals
all the time.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ["tenant_id", "meter_id", "subject", "bucket"]


def upgrade() -> None:
    op.create_index("ix_usage_hourly_period", "usage_hourly", _COLUMNS)
    op.create_index("ix_usage_unique_period", "usage_unique", _COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_usage_unique_period", table_name="usage_unique")
    op.drop_index("ix_usage_hourly_period", table_name="usage_hourly")

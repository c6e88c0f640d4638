"""quarantine: items a job could not process, isolated with their reason (ADR 0044);
billing runs say why they failed

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("job", sa.String(length=128), nullable=False, comment="e.g. invoicing.close_periods"),
        sa.Column("kind", sa.String(length=64), nullable=False, comment="subscription, invoice, billing_run…"),
        sa.Column("item_id", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error", sa.String(length=128), nullable=False, comment="the exception's type"),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    op.create_index(
        "uq_quarantine_active",
        "quarantine",
        ["job", "kind", "tenant_id", "item_id"],
        unique=True,
        postgresql_where=sa.text("released_at IS NULL"),
    )
    op.create_index("ix_quarantine_tenant", "quarantine", ["tenant_id", "quarantined_at"])
    op.add_column(
        "billing_runs",
        sa.Column("error", sa.Text(), nullable=True, comment="why a failed run failed"),
    )


def downgrade() -> None:
    op.drop_column("billing_runs", "error")
    op.drop_index("ix_quarantine_tenant", table_name="quarantine")
    op.drop_index("uq_quarantine_active", table_name="quarantine")
    op.drop_table("quarantine")

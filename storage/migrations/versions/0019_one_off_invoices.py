"""one-off invoices: idempotency keys

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.add_column(
        "invoices",
        sa.Column("request_digest", sa.String(length=64), nullable=True, comment="what was asked"),
    )
    op.add_column("invoices", sa.Column("memo", sa.Text(), nullable=True))
    op.create_index(
        "uq_invoices_idempotency_key",
        "invoices",
        ["tenant_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_invoices_idempotency_key", table_name="invoices")
    op.drop_column("invoices", "memo")
    op.drop_column("invoices", "request_digest")
    op.drop_column("invoices", "idempotency_key")

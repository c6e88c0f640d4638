"""tax report: the documents of a tenant and a period by date (invoices finalized and
voided, credit notes issued and voided), so that the report reads a page at a time from an
index (storage/invoicing/tax_report.py)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_invoices_finalized", "invoices", "finalized_at", "finalized_at IS NOT NULL"),
    ("ix_invoices_voided", "invoices", "closed_at",
     "status = 'void' AND finalized_at IS NOT NULL"),
    ("ix_credit_notes_issued", "credit_notes", "issued_at", None),
    ("ix_credit_notes_voided", "credit_notes", "voided_at", "voided_at IS NOT NULL"),
)  # fmt: skip


def upgrade() -> None:
    for name, table, date, where in INDEXES:
        op.create_index(
            name, table, ["tenant_id", date, "id"],
            postgresql_where=sa.text(where) if where else None,
        )  # fmt: skip


def downgrade() -> None:
    for name, table, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)

"""invoices: indexes that keep a billing run's chunks and the invoice list independent of
how many invoices there are (issue 22, 100,000 subscriptions in one run)

- ``ix_invoices_drafts`` on (finalize_after, id) instead of (finalize_after): finalizing
  claims the next chunk of drafts ``ORDER BY finalize_after, id LIMIT n``; with every draft
  of a run due at the same time, the old index left the ``id`` order to a sort of every
  remaining draft, chunk after chunk (2.4 s a chunk with 97,000 drafts left);
- ``ix_invoices_list`` on (tenant_id, period_start DESC, id): a tenant's list, latest period
  first (``GET /v1/invoices``), reads the first rows of the index instead of sorting every
  invoice of the tenant.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_invoices_drafts", table_name="invoices")
    op.execute(
        "CREATE INDEX ix_invoices_drafts ON invoices (finalize_after, id) WHERE status = 'draft'"
    )
    op.execute("CREATE INDEX ix_invoices_list ON invoices (tenant_id, period_start DESC, id)")


def downgrade() -> None:
    op.drop_index("ix_invoices_list", table_name="invoices")
    op.drop_index("ix_invoices_drafts", table_name="invoices")
    op.execute(
        "CREATE INDEX ix_invoices_drafts ON invoices (finalize_after) WHERE status = 'draft'"
    )

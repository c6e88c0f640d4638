"""invoicing: customer hierarchies — a customer's parent (same tenant) and whether its usage
is billed on its payer's invoices (docs/hierarchies.md)

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "customers",
        sa.Column(
            "parent", sa.String(length=256), nullable=True, comment="the parent's external_id"
        ),
    )
    op.add_column(
        "customers",
        sa.Column(
            "invoice_to",
            sa.String(length=8),
            server_default="self",
            nullable=False,
            comment="self | parent (billed on its payer's invoices)",
        ),
    )
    op.create_foreign_key(
        "fk_customers_parent",
        "customers",
        "customers",
        ["tenant_id", "parent"],
        ["tenant_id", "external_id"],
    )
    op.create_index(
        "ix_customers_parent",
        "customers",
        ["tenant_id", "parent"],
        postgresql_where=sa.text("parent IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_customers_parent", table_name="customers")
    op.drop_constraint("fk_customers_parent", "customers", type_="foreignkey")
    op.drop_column("customers", "invoice_to")
    op.drop_column("customers", "parent")

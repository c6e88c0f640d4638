"""taxes: tax rates as resources (versions by name), customers' tax status and tax IDs, the
tenant's default rates and tax rounding, and the tax breakdown of invoices, their lines and
credit notes (docs/taxes.md)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY = sa.text("'[]'::jsonb")


def _breakdown() -> sa.Column[object]:
    return sa.Column(
        "tax_breakdown", JSONB(), nullable=False, server_default=EMPTY,
        comment="per rate (schemas.taxes.TaxAmount)",
    )  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "tax_rates",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("percentage", sa.Numeric(), nullable=False),
        sa.Column("inclusive", sa.Boolean(), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("jurisdiction", sa.String(128), nullable=True),
        sa.Column("taxable_base_factor", sa.String(32), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("effective_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True,
                  comment="first finalized on an invoice: immutable since"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
    )  # fmt: skip
    op.create_index("ix_tax_rates_name", "tax_rates", ["tenant_id", "name"])
    op.add_column("customers", sa.Column("tax_rates", JSONB(), nullable=True,
                                         comment="tax rates by name; null: the tenant's"))  # fmt: skip
    op.add_column("customers", sa.Column("tax_status", sa.String(16), nullable=False,
                                         server_default="taxable"))  # fmt: skip
    op.add_column("customers", sa.Column("tax_ids", JSONB(), nullable=False,
                                         server_default=EMPTY))  # fmt: skip
    op.execute("UPDATE customers SET tax_status = 'exempt' WHERE tax_exempt")
    op.add_column("invoicing_configs", sa.Column("tax_rates", JSONB(), nullable=False,
                                                 server_default=EMPTY))  # fmt: skip
    op.add_column("invoicing_configs", sa.Column("tax_rounding", sa.String(8), nullable=False,
                                                 server_default="invoice"))  # fmt: skip
    op.add_column("invoicing_configs", sa.Column("reverse_charge_note", sa.Text(), nullable=True,
                                                 comment="null: the default"))  # fmt: skip
    op.add_column("invoicing_configs", sa.Column("exempt_note", sa.Text(), nullable=True,
                                                 comment="null: the default"))  # fmt: skip
    op.add_column("invoices", sa.Column("tax_inclusive", sa.BigInteger(), nullable=False,
                                        server_default="0",
                                        comment="the tax inclusive prices include"))  # fmt: skip
    op.add_column("invoices", _breakdown())
    op.add_column("invoices", sa.Column("tax_note", sa.Text(), nullable=True,
                                        comment="exempt or reverse charge"))  # fmt: skip
    op.add_column("invoices", sa.Column("buyer", JSONB(), nullable=True,
                                        comment="the customer as finalized (schemas.taxes.Buyer)"))  # fmt: skip
    op.add_column("invoice_lines", sa.Column("tax_names", JSONB(), nullable=True,
                                             comment="the rates its price, plan or caller named"))  # fmt: skip
    op.add_column("invoice_lines", sa.Column("taxes", JSONB(), nullable=False,
                                             server_default=EMPTY,
                                             comment="per rate (schemas.taxes.TaxAmount)"))  # fmt: skip
    op.add_column("credit_notes", _breakdown())
    op.add_column("credit_note_lines", sa.Column("taxes", JSONB(), nullable=False,
                                                 server_default=EMPTY,
                                                 comment="per rate (schemas.taxes.TaxAmount)"))  # fmt: skip


def downgrade() -> None:
    op.drop_column("credit_note_lines", "taxes")
    op.drop_column("credit_notes", "tax_breakdown")
    for column in ("taxes", "tax_names"):
        op.drop_column("invoice_lines", column)
    for column in ("buyer", "tax_note", "tax_breakdown", "tax_inclusive"):
        op.drop_column("invoices", column)
    for column in ("exempt_note", "reverse_charge_note", "tax_rounding", "tax_rates"):
        op.drop_column("invoicing_configs", column)
    for column in ("tax_ids", "tax_status", "tax_rates"):
        op.drop_column("customers", column)
    op.drop_index("ix_tax_rates_name", "tax_rates")
    op.drop_table("tax_rates")

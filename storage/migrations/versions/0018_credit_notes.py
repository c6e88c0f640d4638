"""credit notes, their lines and their per-tenant, per-year numbers

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "invoicing_configs",
        sa.Column("credit_note_prefix", sa.String(length=16), server_default="CN", nullable=False),
    )
    op.create_table(
        "credit_notes",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("invoice_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.Column("settle", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False, comment="issued | void"),
        sa.Column("subtotal", sa.BigInteger(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("amount_reducing_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_credits_returned", sa.BigInteger(), nullable=False),
        sa.Column("refund_amount", sa.BigInteger(), nullable=False),
        sa.Column("amount_credited_to_balance", sa.BigInteger(), nullable=False),
        sa.Column("grant_id", sa.String(length=64), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("void_reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"]),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
        sa.UniqueConstraint("tenant_id", "number", name="uq_credit_notes_number"),
    )
    op.create_index("ix_credit_notes_invoice", "credit_notes", ["tenant_id", "invoice_id"])
    op.create_index("ix_credit_notes_customer", "credit_notes", ["tenant_id", "customer_id"])
    op.create_table(
        "credit_note_lines",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("credit_note_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tax_rate", sa.Numeric(), nullable=True),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "credit_note_id"],
            ["credit_notes.tenant_id", "credit_notes.id"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "credit_note_id", "position"),
    )
    op.create_table(
        "credit_note_sequences",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "year"),
    )


def downgrade() -> None:
    op.drop_table("credit_note_sequences")
    op.drop_table("credit_note_lines")
    op.drop_index("ix_credit_notes_customer", table_name="credit_notes")
    op.drop_index("ix_credit_notes_invoice", table_name="credit_notes")
    op.drop_table("credit_notes")
    op.drop_column("invoicing_configs", "credit_note_prefix")

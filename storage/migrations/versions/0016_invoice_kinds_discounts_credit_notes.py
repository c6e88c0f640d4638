"""invoice fields shared by discounts, credit notes and one-off invoices: an invoice's kind,
its discount and what credit notes took off what is due; a line's own tax rate, and for a
discount line the line it reduces and its discount

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "invoices",
        sa.Column("kind", sa.String(length=16), server_default="subscription", nullable=False),
    )
    op.add_column(
        "invoices",
        sa.Column(
            "discount", sa.BigInteger(), server_default="0", nullable=False,
            comment="discounts applied",
        ),
    )  # fmt: skip
    op.add_column(
        "invoices",
        sa.Column(
            "amount_credited", sa.BigInteger(), server_default="0", nullable=False,
            comment="credit notes reducing the amount due",
        ),
    )  # fmt: skip
    # invoices outside any subscription so far: top-ups and true-ups (their one line says)
    op.execute(
        "UPDATE invoices SET kind = l.kind FROM invoice_lines l WHERE l.invoice_id = invoices.id"
        " AND invoices.subscription_id IS NULL AND l.position = 0"
        " AND l.kind IN ('top_up', 'true_up')"
    )
    op.add_column(
        "invoice_lines",
        sa.Column("tax_rate", sa.Numeric(), nullable=True, comment="the line's own tax rate"),
    )
    op.add_column(
        "invoice_lines",
        sa.Column(
            "applies_to", sa.Integer(), nullable=True,
            comment="a discount line: the position of the line it reduces",
        ),
    )  # fmt: skip
    op.add_column(
        "invoice_lines",
        sa.Column("discount_id", sa.String(length=64), nullable=True, comment="a discount line's"),
    )


def downgrade() -> None:
    for column in ("discount_id", "applies_to", "tax_rate"):
        op.drop_column("invoice_lines", column)
    for column in ("amount_credited", "discount", "kind"):
        op.drop_column("invoices", column)

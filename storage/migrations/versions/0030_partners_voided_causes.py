"""partners: a voided credit note is no longer counted — commission_causes.voided_at, and
the ledger's cause wide enough for credit_note_voided (docs/partners.md, Reversals)

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "commission_causes",
        sa.Column(
            "voided_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="credit note: when it was voided (no longer counted)",
        ),
    )
    op.alter_column(
        "commission_entries",
        "cause",
        type_=sa.String(32),
        existing_type=sa.String(16),
        existing_nullable=False,
        comment="invoice_paid|credit_note|refund|credit_note_voided",
    )


def downgrade() -> None:
    # fails while the ledger holds credit_note_voided entries (18 characters): nothing is
    # silently dropped from the ledger
    op.alter_column(
        "commission_entries",
        "cause",
        type_=sa.String(16),
        existing_type=sa.String(32),
        existing_nullable=False,
        comment=None,
    )
    op.drop_column("commission_causes", "voided_at")

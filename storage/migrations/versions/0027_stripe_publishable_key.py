"""payments: a tenant's Stripe publishable key (pk_…), which Stripe.js uses on the hosted
invoice page and the portal

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "stripe_accounts",
        sa.Column("publishable_key", sa.String(length=255), nullable=True, comment="pk_… (public)"),
    )


def downgrade() -> None:
    op.drop_column("stripe_accounts", "publishable_key")

"""commands: the subject a command was sent for (its envelope's ``subject``: the invoice a
hosted page's payment is for, the customer a portal's card is for), so a page asking for a
command's outcome sees only the commands of its own invoice or customer

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0033"
down_revision: str | None = "0032"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("commands", sa.Column("subject", sa.String(256), nullable=True))


def downgrade() -> None:
    op.drop_column("commands", "subject")

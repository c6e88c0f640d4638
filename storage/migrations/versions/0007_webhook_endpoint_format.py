"""webhook_endpoints: format (the body sent: standard | slack)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "webhook_endpoints",
        sa.Column("format", sa.String(length=16), server_default="standard", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("webhook_endpoints", "format")

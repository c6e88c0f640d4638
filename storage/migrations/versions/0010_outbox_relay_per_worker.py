"""outbox: which worker's relay publishes each row

Each worker's relay publishes its own rows, so workers no longer wait for each other's
relays (one relay for the whole database was the bottleneck of every event's latency).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "outbox",
        sa.Column(
            "relay",
            sa.String(length=64),
            server_default="",
            nullable=False,
            comment="the worker whose relay publishes it",
        ),
    )
    op.create_index("ix_outbox_relay", "outbox", ["relay", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_relay", table_name="outbox")
    op.drop_column("outbox", "relay")

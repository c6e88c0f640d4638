"""operations: POS mappings and receipts, replay audit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pos_mappings",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("spec", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("command_id", sa.String(length=256), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pos_mappings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "source", name=op.f("pk_pos_mappings")),
    )
    op.create_table(
        "ops_audit",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("event", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ops_audit")),
    )
    op.create_index(op.f("ix_ops_audit_created_at"), "ops_audit", ["created_at"], unique=False)
    op.create_table(
        "dlq_redrives",
        sa.Column("dlq_topic", sa.String(length=249), nullable=False),
        sa.Column("dlq_partition", sa.Integer(), nullable=False),
        sa.Column("dlq_offset", sa.BigInteger(), nullable=False),
        sa.Column("target_topic", sa.String(length=249), nullable=False),
        sa.Column("audit_id", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column(
            "redriven_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "dlq_topic", "dlq_partition", "dlq_offset", name=op.f("pk_dlq_redrives")
        ),
    )


def downgrade() -> None:
    op.drop_table("dlq_redrives")
    op.drop_index(op.f("ix_ops_audit_created_at"), table_name="ops_audit")
    op.drop_table("ops_audit")
    op.drop_table("pos_mappings")

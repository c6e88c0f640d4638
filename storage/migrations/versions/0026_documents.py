"""documents: the tenant's branding, rendered PDFs by SHA-256 and each invoice's PDF
(storage/documents.py); customers get a locale

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def _tenant() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    )


def upgrade() -> None:
    op.add_column("customers", sa.Column("locale", sa.String(8), nullable=True))
    op.create_table(
        "document_branding",
        _tenant(),
        sa.Column("spec", JSONB, nullable=False, comment="schemas.documents.Branding"),
        sa.Column("updated_at", _TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "document_blobs",
        _tenant(),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("media_type", sa.String(64), nullable=False, server_default="application/pdf"),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "invoice_documents",
        _tenant(),
        sa.Column("invoice_id", sa.String(36), primary_key=True),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("number", sa.String(64), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("hosted_expires_at", _TZ, nullable=False),
        sa.Column("rendered_at", _TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_invoice_documents_customer", "invoice_documents", ["customer"])


def downgrade() -> None:
    op.drop_table("invoice_documents")
    op.drop_table("document_blobs")
    op.drop_table("document_branding")
    op.drop_column("customers", "locale")

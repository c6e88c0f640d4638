"""receipts: per-tenant Ed25519 signing keys (private keys encrypted), one hash chain per
tenant and customer (its head row, locked to append), and the signed receipts
(storage/receipts.py, ADR 0052)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    )


def upgrade() -> None:
    op.create_table(
        "receipt_keys",
        _tenant(),
        sa.Column("kid", sa.String(64), primary_key=True, comment="RFC 7638 thumbprint"),
        sa.Column("public_key", sa.String(64), nullable=False, comment="Ed25519, raw, base64url"),
        sa.Column("private_key", sa.Text(), nullable=False, comment="Fernet ciphertext (enc:…)"),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "not_after",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Set when rotated out; none while current",
        ),
    )
    op.create_index(
        "ux_receipt_keys_current",
        "receipt_keys",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("not_after IS NULL"),
    )
    op.create_table(
        "receipt_chains",
        _tenant(),
        sa.Column("customer", sa.String(256), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False, comment="0 before the first receipt"),
        sa.Column("hash", sa.String(64), nullable=False, comment="SHA-256 hex of the last payload"),
    )
    op.create_table(
        "receipts",
        _tenant(),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("document_id", sa.String(128), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False, comment="Ed25519, base64url"),
        sa.Column(
            "payload", sa.Text(), nullable=False, comment="Canonical JSON (RFC 8785), signed"
        ),
        sa.UniqueConstraint("tenant_id", "customer", "seq", name="uq_receipts_chain_seq"),
        sa.UniqueConstraint("tenant_id", "kind", "document_id", name="uq_receipts_document"),
    )
    op.create_index("ix_receipts_issued", "receipts", ["tenant_id", "issued_at", "id"])


def downgrade() -> None:
    op.drop_table("receipts")
    op.drop_table("receipt_chains")
    op.drop_index("ux_receipt_keys_current", table_name="receipt_keys")
    op.drop_table("receipt_keys")

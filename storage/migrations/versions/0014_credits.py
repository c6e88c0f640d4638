"""credits: grants, their append-only ledger, automatic top-ups and commitments; invoices carry the
credits applied and may stand outside any subscription (a credit top-up)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "invoicing_configs",
        sa.Column(
            "credits_apply", sa.String(length=16), nullable=False, server_default="after_tax"
        ),
    )
    op.add_column(
        "invoices",
        sa.Column(
            "credits",
            sa.BigInteger(),
            nullable=False,
            server_default="0",
            comment="prepaid credits applied",
        ),
    )
    op.alter_column(
        "invoices", "subscription_id", existing_type=sa.String(length=64), nullable=True
    )
    op.alter_column("invoices", "plan_id", existing_type=sa.String(length=36), nullable=True)
    op.add_column(
        "invoice_lines",
        sa.Column("grant_id", sa.String(length=64), nullable=True, comment="a credit line's grant"),
    )
    op.create_table(
        "credit_grants",
        sa.Column(
            "tenant_id",
            sa.String(length=63),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column(
            "customer_id", sa.String(length=36), sa.ForeignKey("customers.id"), nullable=False
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scope", postgresql.JSONB(), nullable=True),
        sa.Column("rollover", postgresql.JSONB(), nullable=True),
        sa.Column("purchase_amount", sa.BigInteger(), nullable=True, comment="a top-up's price"),
        sa.Column(
            "invoice_id",
            sa.String(length=36),
            sa.ForeignKey("invoices.id"),
            nullable=True,
            comment="a top-up's invoice",
        ),
        sa.Column("rolled_over_from", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_credit_grants")),
    )
    op.create_index("ix_credit_grants_customer", "credit_grants", ["tenant_id", "customer_id"])
    op.create_index(
        "ix_credit_grants_expiry",
        "credit_grants",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_table(
        "credit_entries",
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("grant_id", sa.String(length=64), nullable=False),
        sa.Column(
            "customer_id", sa.String(length=36), sa.ForeignKey("customers.id"), nullable=False
        ),
        sa.Column(
            "kind",
            sa.String(length=16),
            nullable=False,
            comment="granted | topped_up | applied | reversed | expired | voided",
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False, comment="signed minor units"),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, comment="counts from then"),
        sa.Column("invoice_id", sa.String(length=36), nullable=True),
        sa.Column(
            "key", sa.String(length=160), nullable=False, comment="unique per tenant: written once"
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_credit_entries")),
        sa.UniqueConstraint("id", name=op.f("uq_credit_entries_id")),
        sa.UniqueConstraint("tenant_id", "key", name="uq_credit_entries_key"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "grant_id"],
            ["credit_grants.tenant_id", "credit_grants.id"],
            name=op.f("fk_credit_entries_tenant_id_credit_grants"),
        ),
    )
    op.create_index("ix_credit_entries_grant", "credit_entries", ["tenant_id", "grant_id"])
    op.create_index(
        "ix_credit_entries_customer", "credit_entries", ["tenant_id", "customer_id", "seq"]
    )
    op.create_index(
        "ix_credit_entries_invoice",
        "credit_entries",
        ["invoice_id"],
        postgresql_where=sa.text("invoice_id IS NOT NULL"),
    )
    op.create_table(
        "credit_auto_top_ups",
        sa.Column(
            "tenant_id",
            sa.String(length=63),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "customer_id", sa.String(length=36), sa.ForeignKey("customers.id"), nullable=False
        ),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("purchase_amount", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("expires_after_days", sa.Integer(), nullable=True),
        sa.Column(
            "armed",
            sa.Boolean(),
            nullable=False,
            comment="false once it topped up, until the balance is above the threshold",
        ),
        sa.Column("count", sa.Integer(), nullable=False, comment="top-ups so far"),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name=op.f("pk_credit_auto_top_ups")),
    )
    op.create_table(
        "commitments",
        sa.Column("tenant_id", sa.String(length=63), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=36), sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_commitments")),
    )
    op.create_index("ix_commitments_end", "commitments", ["end"])
    op.create_index("ix_commitments_customer_id", "commitments", ["customer_id"])
    op.create_table(
        "commitment_entries",
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("commitment_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="drawn | reversed | trued_up"),
        sa.Column("amount", sa.BigInteger(), nullable=False, comment="drawn: -, reversed: +, trued_up: -"),
        sa.Column("invoice_id", sa.String(length=36), nullable=True),
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_commitment_entries")),
        sa.UniqueConstraint("tenant_id", "key", name="uq_commitment_entries_key"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "commitment_id"], ["commitments.tenant_id", "commitments.id"],
            name=op.f("fk_commitment_entries_tenant_id_commitments"),
        ),
    )
    op.create_index(
        "ix_commitment_entries_commitment", "commitment_entries", ["tenant_id", "commitment_id"]
    )


def downgrade() -> None:
    op.drop_table("commitment_entries")
    op.drop_table("commitments")
    op.drop_table("credit_auto_top_ups")
    op.drop_index("ix_credit_entries_invoice", table_name="credit_entries")
    op.drop_index("ix_credit_entries_customer", table_name="credit_entries")
    op.drop_index("ix_credit_entries_grant", table_name="credit_entries")
    op.drop_table("credit_entries")
    op.drop_index("ix_credit_grants_expiry", table_name="credit_grants")
    op.drop_index("ix_credit_grants_customer", table_name="credit_grants")
    op.drop_table("credit_grants")
    op.drop_column("invoice_lines", "grant_id")
    op.alter_column("invoices", "plan_id", existing_type=sa.String(length=36), nullable=False)
    op.alter_column(
        "invoices", "subscription_id", existing_type=sa.String(length=64), nullable=False
    )
    op.drop_column("invoices", "credits")
    op.drop_column("invoicing_configs", "credits_apply")

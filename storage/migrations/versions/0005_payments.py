"""payments: Stripe settings, customer mapping, payment attempts, dunning, refunds

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["tenants.id"],
        name=op.f(f"fk_{table}_tenant_id_tenants"),
        ondelete="CASCADE",
    )


def _now(name: str) -> sa.Column[datetime]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "stripe_accounts",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("secret_key", sa.Text(), nullable=False, comment="Fernet ciphertext (enc:…)"),
        sa.Column("webhook_secret", sa.Text(), nullable=False, comment="Fernet ciphertext (enc:…)"),
        sa.Column(
            "previous_webhook_secret",
            sa.Text(),
            nullable=True,
            comment="Still accepted after a rotation (Fernet ciphertext)",
        ),
        sa.Column("auto_collection", sa.Boolean(), nullable=False),
        sa.Column("endpoint_token", sa.String(length=64), nullable=False),
        _now("updated_at"),
        _tenant("stripe_accounts"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_stripe_accounts")),
        sa.UniqueConstraint("endpoint_token", name=op.f("uq_stripe_accounts_endpoint_token")),
    )
    op.create_table(
        "stripe_customers",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False, comment="external_id"),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("payment_method_id", sa.String(length=255), nullable=True),
        _now("updated_at"),
        _tenant("stripe_customers"),
        sa.PrimaryKeyConstraint("tenant_id", "customer", name=op.f("pk_stripe_customers")),
    )
    op.create_table(
        "payment_collections",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("correlationid", sa.String(length=256), nullable=True),
        _now("updated_at"),
        _tenant("payment_collections"),
        sa.PrimaryKeyConstraint("tenant_id", "invoice_id", name=op.f("pk_payment_collections")),
    )
    op.create_index(
        "ix_payment_collections_next",
        "payment_collections",
        ["next_attempt_at"],
        postgresql_where="status IN ('due', 'in_flight')",
    )
    op.create_table(
        "payments",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True, comment="Stripe attempt; none offline"),
        sa.Column(
            "state",
            sa.String(length=16),
            nullable=False,
            comment="creating|processing|succeeded|failed",
        ),
        sa.Column("stripe_payment_intent", sa.String(length=255), nullable=True),
        sa.Column("stripe_charge", sa.String(length=255), nullable=True),
        sa.Column("failure_code", sa.String(length=128), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("reference", sa.String(length=256), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("disputed", sa.Boolean(), nullable=False),
        _now("created_at"),
        _now("updated_at"),
        _tenant("payments"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_payments")),
        sa.UniqueConstraint(
            "tenant_id",
            "invoice_id",
            "attempt",
            name=op.f("uq_payments_tenant_id_invoice_id_attempt"),
        ),
    )
    op.create_index("ix_payments_intent", "payments", ["stripe_payment_intent"])
    op.create_index("ix_payments_charge", "payments", ["stripe_charge"])
    op.create_index(op.f("ix_payments_invoice_id"), "payments", ["invoice_id"])
    op.create_table(
        "payment_refunds",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=128), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stripe_refund_id", sa.String(length=255), nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("correlationid", sa.String(length=256), nullable=True),
        _now("created_at"),
        _tenant("payment_refunds"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_payment_refunds")),
    )
    op.create_index(op.f("ix_payment_refunds_payment_id"), "payment_refunds", ["payment_id"])
    op.create_table(
        "payment_operations",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=256), nullable=False, comment="The command id"),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column(
            "command",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="The command (no secrets)",
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        _now("created_at"),
        _tenant("payment_operations"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_payment_operations")),
    )
    op.create_index(
        "ix_payment_operations_open",
        "payment_operations",
        ["lease_until"],
        postgresql_where="state <> 'done'",
    )
    op.create_table(
        "stripe_events",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        _now("received_at"),
        _tenant("stripe_events"),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name=op.f("pk_stripe_events")),
    )


def downgrade() -> None:
    for table in (
        "stripe_events",
        "payment_operations",
        "payment_refunds",
        "payments",
        "payment_collections",
        "stripe_customers",
        "stripe_accounts",
    ):
        op.drop_table(table)

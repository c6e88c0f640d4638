"""partners: partners, commission rules, attributions, the subscriptions' plans, the
commission ledger and its state (paid invoices, accruals, causes, the per-month volume row
locked by every accrual), statements (gapless numbers per tenant and year) and payouts
(storage/partners/, docs/partners.md)

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    )


def _at(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "partners",
        _tenant(),
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        _at("created_at"),
        _at("updated_at"),
    )
    op.create_table(
        "commission_rules",
        _tenant(),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("partner_tier", sa.String(64), nullable=False),
        sa.Column(
            "spec",
            JSONB,
            nullable=False,
            comment="CommissionRuleSpec JSON (exact decimals as strings)",
        ),
        _at("updated_at"),
    )
    op.create_index("ix_commission_rules_tier", "commission_rules", ["tenant_id", "partner_tier"])
    op.create_table(
        "partner_attributions",
        _tenant(),
        sa.Column("customer", sa.String(256), primary_key=True),
        sa.Column("effective_from", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        _at("recorded_at"),
    )
    op.create_index(
        "ix_partner_attributions_partner", "partner_attributions", ["tenant_id", "partner_id"]
    )
    op.create_table(
        "partner_subscriptions",
        _tenant(),
        sa.Column("subscription_id", sa.String(64), primary_key=True),
        sa.Column("plan", sa.String(64), nullable=False),
    )
    op.create_table(
        "commission_invoices",
        _tenant(),
        sa.Column("invoice_id", sa.String(64), primary_key=True),
        sa.Column("invoice_number", sa.String(64), nullable=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False, comment="N = total - tax"),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column(
            "paid_net", sa.Text(), nullable=False, comment="K0 = N * amount_paid / total, p/q"
        ),
        sa.Column("period", sa.String(7), nullable=False, comment="The month of paid_at (UTC)"),
        _at("paid_at"),
    )
    op.create_table(
        "commission_accruals",
        _tenant(),
        sa.Column("invoice_id", sa.String(64), primary_key=True),
        sa.Column("rule", sa.String(64), primary_key=True),
        sa.Column("rule_kind", sa.String(16), nullable=False),
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False, comment="a0, minor units"),
        sa.Column("reversed", sa.BigInteger(), nullable=False, comment="Σ reversals so far"),
    )
    op.create_table(
        "commission_causes",
        _tenant(),
        sa.Column("cause", sa.String(16), primary_key=True, comment="credit_note|refund"),
        sa.Column("cause_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("invoice_id", sa.String(64), nullable=False),
        sa.Column(
            "amount",
            sa.BigInteger(),
            nullable=False,
            comment="refund: its amount; credit note: refund + credited to balance",
        ),
        sa.Column("subtotal", sa.BigInteger(), nullable=False, comment="credit note: its subtotal"),
        sa.Column("total", sa.BigInteger(), nullable=False, comment="credit note: its total"),
        _at("at"),
    )
    op.create_index(
        "ix_commission_causes_invoice", "commission_causes", ["tenant_id", "invoice_id", "seq"]
    )
    op.create_table(
        "commission_periods",
        _tenant(),
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("volume", sa.Text(), nullable=False, comment="Σ K0, p/q"),
        sa.Column("accrued", JSONB, nullable=False, comment="{rule: Σ accrued minor units}"),
    )
    op.create_table(
        "commission_entries",
        _tenant(),
        sa.Column("entry_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False, comment="accrued|reversed"),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("invoice_id", sa.String(64), nullable=False),
        sa.Column("invoice_number", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("rule_kind", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("base", sa.Text(), nullable=False, comment="base_minor as the event carries it"),
        sa.Column(
            "amount", sa.BigInteger(), nullable=False, comment="> 0; a reversal counts negative"
        ),
        sa.Column("period", sa.String(7), nullable=False),
        _at("effective_at"),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("cause_id", sa.String(128), nullable=False),
        sa.Column("accrual_id", sa.String(36), nullable=True),
        sa.Column("statement_id", sa.String(36), nullable=True),
    )
    op.create_index(
        "ix_commission_entries_partner",
        "commission_entries",
        ["tenant_id", "partner_id", "effective_at"],
    )
    op.create_index(
        "ix_commission_entries_statement", "commission_entries", ["tenant_id", "statement_id"]
    )
    op.create_table(
        "commission_statement_numbers",
        _tenant(),
        sa.Column("year", sa.Integer(), primary_key=True),
        sa.Column("last", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "commission_statements",
        _tenant(),
        sa.Column("statement_id", sa.String(36), primary_key=True),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("partner_name", sa.String(256), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("amount_payable", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False, comment="payable|paid|carried"),
        sa.Column("carried_to", sa.String(36), nullable=True),
        _at("issued_at"),
        sa.UniqueConstraint(
            "tenant_id", "partner_id", "period", "currency", name="uq_commission_statements_period"
        ),
        sa.UniqueConstraint("tenant_id", "number", name="uq_commission_statements_number"),
    )
    op.create_index(
        "ix_commission_statements_carried_to",
        "commission_statements",
        ["tenant_id", "carried_to"],
    )
    op.create_table(
        "commission_payouts",
        _tenant(),
        sa.Column("payout_id", sa.String(64), primary_key=True),
        sa.Column("statement_id", sa.String(36), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(256), nullable=False),
        _at("paid_at"),
        _at("recorded_at"),
    )
    op.create_index(
        "ix_commission_payouts_statement", "commission_payouts", ["tenant_id", "statement_id"]
    )


def downgrade() -> None:
    for table in (
        "commission_payouts",
        "commission_statements",
        "commission_statement_numbers",
        "commission_entries",
        "commission_periods",
        "commission_causes",
        "commission_accruals",
        "commission_invoices",
        "partner_subscriptions",
        "partner_attributions",
        "commission_rules",
        "partners",
    ):
        op.drop_table(table)

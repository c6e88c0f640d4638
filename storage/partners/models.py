"""The partners tables (migration 0028): partners, commission rules, attributions, the
subscriptions' plans, the commission ledger and the state it is derived from, statements and
payouts.

Exact fractions (an invoice's paid net, a partner's monthly volume) are stored as text
``"p/q"`` (or ``"p"``), read back with ``fractions.Fraction``: they are only ever computed
on in Python, under the row lock that serialises them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


def _tenant() -> Mapped[str]:
    return mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)


class PartnerRow(Base):
    __tablename__ = "partners"

    tenant_id: Mapped[str] = _tenant()
    partner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    tier: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CommissionRuleRow(Base):
    __tablename__ = "commission_rules"
    __table_args__ = (Index("ix_commission_rules_tier", "tenant_id", "partner_tier"),)

    tenant_id: Mapped[str] = _tenant()
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_tier: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(
        JSONB, comment="CommissionRuleSpec JSON (exact decimals as strings)"
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AttributionRow(Base):
    """The customer belongs to the partner for invoices whose period starts at or after
    ``effective_from`` (until the next attribution)."""

    __tablename__ = "partner_attributions"
    __table_args__ = (Index("ix_partner_attributions_partner", "tenant_id", "partner_id"),)

    tenant_id: Mapped[str] = _tenant()
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    effective_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PartnerSubscriptionRow(Base):
    """A subscription's plan (from ``subscription.*``): which plan rules an invoice meets."""

    __tablename__ = "partner_subscriptions"

    tenant_id: Mapped[str] = _tenant()
    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan: Mapped[str] = mapped_column(String(64))


class CommissionInvoiceRow(Base):
    """An attributed invoice that was paid: what its commissions were computed from (K0)
    and what its later reductions are measured against (N, total)."""

    __tablename__ = "commission_invoices"

    tenant_id: Mapped[str] = _tenant()
    invoice_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    invoice_number: Mapped[str | None] = mapped_column(String(64))
    partner_id: Mapped[str] = mapped_column(String(64))
    customer: Mapped[str] = mapped_column(String(256))
    currency: Mapped[str] = mapped_column(String(3))
    net: Mapped[int] = mapped_column(BigInteger, comment="N = total - tax")
    total: Mapped[int] = mapped_column(BigInteger)
    paid_net: Mapped[str] = mapped_column(Text, comment="K0 = N * amount_paid / total, p/q")
    period: Mapped[str] = mapped_column(String(7), comment="The month of paid_at (UTC)")
    paid_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CommissionAccrualRow(Base):
    """One (invoice, rule) accrual: a0 and what of it has been reversed."""

    __tablename__ = "commission_accruals"

    tenant_id: Mapped[str] = _tenant()
    invoice_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule_kind: Mapped[str] = mapped_column(String(16))
    entry_id: Mapped[str] = mapped_column(String(36))
    amount: Mapped[int] = mapped_column(BigInteger, comment="a0, minor units")
    reversed: Mapped[int] = mapped_column(BigInteger, comment="Σ reversals so far")


class CommissionCauseRow(Base):
    """A credit note or a refund of an invoice that may carry commissions, kept once by its
    id (a replay changes nothing) and applied when (or once) the invoice has accrued. A
    voided credit note stays, with ``voided_at``, and is no longer counted."""

    __tablename__ = "commission_causes"
    __table_args__ = (Index("ix_commission_causes_invoice", "tenant_id", "invoice_id", "seq"),)

    tenant_id: Mapped[str] = _tenant()
    cause: Mapped[str] = mapped_column(String(16), primary_key=True, comment="credit_note|refund")
    cause_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    invoice_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(
        BigInteger, comment="refund: its amount; credit note: refund + credited to balance"
    )
    subtotal: Mapped[int] = mapped_column(BigInteger, comment="credit note: its subtotal")
    total: Mapped[int] = mapped_column(BigInteger, comment="credit note: its total")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="credit note: when it was voided (no longer counted)"
    )


class CommissionPeriodRow(Base):
    """Per partner, month and currency: the paid volume and each rule's accrued sum. Locked
    FOR UPDATE by every accrual of that partner, month and currency, so two never read the
    same volume."""

    __tablename__ = "commission_periods"

    tenant_id: Mapped[str] = _tenant()
    partner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    volume: Mapped[str] = mapped_column(Text, comment="Σ K0, p/q")
    accrued: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="{rule: Σ accrued minor units}")


class CommissionEntryRow(Base):
    """The ledger: one row per commission.accrued / commission.reversed."""

    __tablename__ = "commission_entries"
    __table_args__ = (
        Index("ix_commission_entries_partner", "tenant_id", "partner_id", "effective_at"),
        Index("ix_commission_entries_statement", "tenant_id", "statement_id"),
    )

    tenant_id: Mapped[str] = _tenant()
    entry_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    kind: Mapped[str] = mapped_column(String(8), comment="accrued|reversed")
    partner_id: Mapped[str] = mapped_column(String(64))
    customer: Mapped[str] = mapped_column(String(256))
    invoice_id: Mapped[str] = mapped_column(String(64))
    invoice_number: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    rule_kind: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    base: Mapped[str] = mapped_column(Text, comment="base_minor as the event carries it")
    amount: Mapped[int] = mapped_column(BigInteger, comment="> 0; a reversal counts negative")
    period: Mapped[str] = mapped_column(String(7))
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cause: Mapped[str] = mapped_column(
        String(32), comment="invoice_paid|credit_note|refund|credit_note_voided"
    )
    cause_id: Mapped[str] = mapped_column(String(128))
    accrual_id: Mapped[str | None] = mapped_column(String(36))
    statement_id: Mapped[str | None] = mapped_column(String(36))


class StatementNumberRow(Base):
    """The last statement number of a tenant's year (gapless: taken under its row lock)."""

    __tablename__ = "commission_statement_numbers"

    tenant_id: Mapped[str] = _tenant()
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


class StatementRow(Base):
    __tablename__ = "commission_statements"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "partner_id", "period", "currency", name="uq_commission_statements_period"
        ),
        UniqueConstraint("tenant_id", "number", name="uq_commission_statements_number"),
        Index("ix_commission_statements_carried_to", "tenant_id", "carried_to"),
    )

    tenant_id: Mapped[str] = _tenant()
    statement_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    number: Mapped[str] = mapped_column(String(32))
    partner_id: Mapped[str] = mapped_column(String(64))
    partner_name: Mapped[str] = mapped_column(String(256))
    period: Mapped[str] = mapped_column(String(7))
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[int] = mapped_column(BigInteger)
    amount_payable: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(8), comment="payable|paid|carried")
    carried_to: Mapped[str | None] = mapped_column(String(36))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PayoutRow(Base):
    __tablename__ = "commission_payouts"
    __table_args__ = (Index("ix_commission_payouts_statement", "tenant_id", "statement_id"),)

    tenant_id: Mapped[str] = _tenant()
    payout_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    statement_id: Mapped[str] = mapped_column(String(36))
    amount: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(256))
    paid_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

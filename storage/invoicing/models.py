"""Invoicing's tables: customers, plans, subscriptions, billing runs, invoices, their lines,
payments and number sequences (ORM models only; the SQL is in ``repository.py``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class InvoicingConfigRow(Base):
    __tablename__ = "invoicing_configs"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    rounding: Mapped[str] = mapped_column(String(16))
    grace_period_hours: Mapped[int] = mapped_column(Integer)
    number_prefix: Mapped[str] = mapped_column(String(16))
    credit_note_prefix: Mapped[str] = mapped_column(String(16), server_default="CN")
    credits_apply: Mapped[str] = mapped_column(String(16), server_default="after_tax")
    late_usage_grace_hours: Mapped[int] = mapped_column(Integer, server_default="72")
    trial_will_end_days: Mapped[int] = mapped_column(Integer, server_default="3")
    # taxes (docs/taxes.md): the default rates by name, where tax is rounded, the notes
    tax_rates: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    tax_rounding: Mapped[str] = mapped_column(String(8), server_default="invoice")
    reverse_charge_note: Mapped[str | None] = mapped_column(Text, comment="null: the default")
    exempt_note: Mapped[str | None] = mapped_column(Text, comment="null: the default")


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        # a parent of the same tenant, by construction (docs/hierarchies.md)
        ForeignKeyConstraint(
            ["tenant_id", "parent"],
            ["customers.tenant_id", "customers.external_id"],
            name="fk_customers_parent",
        ),
        Index("ix_customers_parent", "tenant_id", "parent", postgresql_where="parent IS NOT NULL"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric)
    tax_exempt: Mapped[bool] = mapped_column(Boolean)
    tax_rates: Mapped[list[str] | None] = mapped_column(
        JSONB(none_as_null=True), comment="tax rates by name; null: the tenant's"
    )
    tax_status: Mapped[str] = mapped_column(String(16), server_default="taxable")
    tax_ids: Mapped[list[dict[str, str]]] = mapped_column(JSONB, server_default="[]")
    net_terms_days: Mapped[int] = mapped_column(Integer)
    billing_address: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    locale: Mapped[str | None] = mapped_column(String(8))
    parent: Mapped[str | None] = mapped_column(String(256), comment="the parent's external_id")
    invoice_to: Mapped[str] = mapped_column(
        String(8), server_default="self", comment="self | parent (billed on its payer's invoices)"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str] = mapped_column(String(8))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="PlanSpec JSON (exact decimals)")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        Index("ix_subscriptions_due", "current_period_end", postgresql_where="status = 'active'"),
        Index(
            "ix_subscriptions_late_usage",
            "ended_at",
            postgresql_where="status = 'ended' AND late_usage_checked_at IS NULL",
        ),
        Index(
            "ix_subscriptions_trial_will_end",
            "trial_end",
            postgresql_where="status = 'active' AND trial_end IS NOT NULL "
            "AND trial_will_end_sent_at IS NULL",
        ),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    next_plan_id: Mapped[str | None] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(16))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    anchor: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), comment="periods count from here (the start, or a plan change)"
    )
    period_index: Mapped[int] = mapped_column(Integer, comment="periods since the anchor")
    current_period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    late_usage_checked_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="ended: when its late-usage invoice was drafted"
    )
    # trials and immediate plan changes (ADR 0049)
    trial_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trial_end_behavior: Mapped[str] = mapped_column(String(16), server_default="convert")
    bill_trial_usage: Mapped[bool] = mapped_column(Boolean, server_default="false")
    trial_will_end_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_proration: Mapped[Decimal] = mapped_column(
        Numeric, server_default="1", comment="share of the flat fees the current period bills"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillingRun(Base):
    __tablename__ = "billing_runs"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), comment="pending | completed | failed")
    invoices_created: Mapped[int] = mapped_column(Integer, default=0)
    invoices_finalized: Mapped[int] = mapped_column(Integer, default=0)
    drafts_waiting: Mapped[int] = mapped_column(Integer, default=0)
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text, comment="why a failed run failed")


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "subscription_id", "period_start", name="uq_invoices_period"),
        UniqueConstraint("tenant_id", "number", name="uq_invoices_number"),
        ForeignKeyConstraint(
            ["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]
        ),
        # the drafts a run finalizes, in claim order (migration 0031)
        Index("ix_invoices_drafts", "finalize_after", "id", postgresql_where="status = 'draft'"),
        # a tenant's list, latest period first (GET /v1/invoices; migration 0031)
        Index("ix_invoices_list", "tenant_id", text("period_start DESC"), "id"),
        Index(
            "uq_invoices_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where="idempotency_key IS NOT NULL",
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[str | None] = mapped_column(
        String(64), comment="None: outside any subscription (a credit top-up)"
    )
    plan_id: Mapped[str | None] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(
        String(16), default="subscription", server_default="subscription"
    )
    number: Mapped[str | None] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    proration: Mapped[Decimal] = mapped_column(Numeric, comment="share of the flat fees billed")
    usage_billed: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default="true", comment="false: a trial's usage, shown at 0"
    )
    subtotal: Mapped[int] = mapped_column(BigInteger)
    discount: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="discounts applied"
    )
    tax: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="prepaid credits applied"
    )
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    amount_credited: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="credit notes reducing the amount due"
    )
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric)
    tax_inclusive: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="the tax inclusive prices include"
    )
    tax_breakdown: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default="[]", comment="per rate (schemas.taxes.TaxAmount)"
    )
    tax_note: Mapped[str | None] = mapped_column(Text, comment="exempt or reverse charge")
    buyer: Mapped[dict[str, Any] | None] = mapped_column(
        JSONB(none_as_null=True), comment="the customer as finalized (schemas.taxes.Buyer)"
    )
    rounding: Mapped[str] = mapped_column(String(16))
    finalize_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    usage_offsets: Mapped[dict[str, int] | None] = mapped_column(
        JSONB(none_as_null=True), comment="usage topic end offsets after period close, by partition"
    )
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="voided or marked uncollectible"
    )
    status_reason: Mapped[str | None] = mapped_column(Text)
    # one-off invoices (docs/one-off-invoices.md): unique per tenant where set
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_digest: Mapped[str | None] = mapped_column(String(64), comment="what was asked")
    memo: Mapped[str | None] = mapped_column(Text)


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    price_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    meter: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(256))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    unit_price: Mapped[Decimal | None] = mapped_column(Numeric)
    tiers: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    proration: Mapped[Decimal] = mapped_column(Numeric)
    minimum_applied: Mapped[bool] = mapped_column(Boolean)
    amount: Mapped[int] = mapped_column(BigInteger)
    adjustment_for: Mapped[str | None] = mapped_column(String(64))
    grant_id: Mapped[str | None] = mapped_column(String(64), comment="a credit line's grant")
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric, comment="the line's own tax rate")
    applies_to: Mapped[int | None] = mapped_column(
        Integer, comment="a discount line: the position of the line it reduces"
    )
    discount_id: Mapped[str | None] = mapped_column(String(64), comment="a discount line's")
    tax_names: Mapped[list[str] | None] = mapped_column(
        JSONB(none_as_null=True), comment="the rates its price, plan or caller named"
    )
    taxes: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default="[]", comment="per rate (schemas.taxes.TaxAmount)"
    )


class InvoicePayment(Base):
    __tablename__ = "invoice_payments"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class InvoiceSequence(Base):
    __tablename__ = "invoice_sequences"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)

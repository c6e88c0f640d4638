"""Payments tables: per-tenant Stripe accounts (secrets encrypted), the customer mapping, one
collection per invoice (its dunning schedule), payments (one row per Stripe attempt, plus
offline payments), refunds, queued Stripe operations, and the Stripe event ids the ingress
has accepted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class StripeAccount(Base):
    __tablename__ = "stripe_accounts"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    secret_key: Mapped[str] = mapped_column(Text, comment="Fernet ciphertext (enc:…)")
    webhook_secret: Mapped[str] = mapped_column(Text, comment="Fernet ciphertext (enc:…)")
    previous_webhook_secret: Mapped[str | None] = mapped_column(
        Text, comment="Still accepted after a rotation (Fernet ciphertext)"
    )
    auto_collection: Mapped[bool] = mapped_column(Boolean)
    endpoint_token: Mapped[str] = mapped_column(String(64), unique=True)
    publishable_key: Mapped[str | None] = mapped_column(String(255), comment="pk_… (public)")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StripeCustomer(Base):
    __tablename__ = "stripe_customers"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    customer: Mapped[str] = mapped_column(String(256), primary_key=True, comment="external_id")
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Collection(Base):
    """Collecting one invoice: ``due`` (at ``next_attempt_at``) → ``in_flight`` (leased until
    ``next_attempt_at``) → ``succeeded`` | ``due`` again (dunning) | ``exhausted``;
    ``awaiting`` when Stripe answered ``processing`` (a webhook settles it); ``settled``
    when an offline payment covered it."""

    __tablename__ = "payment_collections"
    __table_args__ = (
        Index(
            "ix_payment_collections_next",
            "next_attempt_at",
            postgresql_where="status IN ('due', 'in_flight')",
        ),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    invoice_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    correlationid: Mapped[str | None] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "invoice_id", "attempt"),
        Index("ix_payments_intent", "stripe_payment_intent"),
        Index("ix_payments_charge", "stripe_charge"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    invoice_id: Mapped[str] = mapped_column(String(64), index=True)
    customer: Mapped[str] = mapped_column(String(256))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int | None] = mapped_column(Integer, comment="Stripe attempt; none offline")
    state: Mapped[str] = mapped_column(String(16), comment="creating|processing|succeeded|failed")
    stripe_payment_intent: Mapped[str | None] = mapped_column(String(255))
    stripe_charge: Mapped[str | None] = mapped_column(String(255))
    failure_code: Mapped[str | None] = mapped_column(String(128))
    failure_message: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(String(256))
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    disputed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Refund(Base):
    """``pending`` → ``in_flight`` (leased until ``lease_until``) → ``succeeded`` | ``failed``."""

    __tablename__ = "payment_refunds"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(128), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255))
    failure: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    correlationid: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Operation(Base):
    """A command that calls Stripe (customer sync, payment method, refund), run by the
    payments job outside any transaction: ``pending`` → ``in_flight`` (leased until
    ``lease_until``) → ``done`` (its command's outcome recorded in the same commit)."""

    __tablename__ = "payment_operations"
    __table_args__ = (
        Index("ix_payment_operations_open", "lease_until", postgresql_where="state <> 'done'"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(256), primary_key=True, comment="The command id")
    type: Mapped[str] = mapped_column(String(64))
    command: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="The command (no secrets)")
    state: Mapped[str] = mapped_column(String(16))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StripeEventSeen(Base):
    """Stripe event ids the ingress accepted (published once)."""

    __tablename__ = "stripe_events"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

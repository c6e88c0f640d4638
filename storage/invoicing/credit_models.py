"""Prepaid credits' tables (ORM models only; the SQL is in ``credits.py``): grants
(immutable rows), the append-only ledger of their entries, automatic top-up settings,
commitments and their entries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
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


class CreditGrant(Base):
    __tablename__ = "credit_grants"
    __table_args__ = (
        Index("ix_credit_grants_customer", "tenant_id", "customer_id"),
        Index("ix_credit_grants_expiry", "expires_at", postgresql_where="expires_at IS NOT NULL"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scope: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    rollover: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    purchase_amount: Mapped[int | None] = mapped_column(BigInteger, comment="a top-up's price")
    invoice_id: Mapped[str | None] = mapped_column(
        ForeignKey("invoices.id"), comment="a top-up's invoice"
    )
    rolled_over_from: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CreditEntry(Base):
    __tablename__ = "credit_entries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key", name="uq_credit_entries_key"),
        ForeignKeyConstraint(
            ["tenant_id", "grant_id"], ["credit_grants.tenant_id", "credit_grants.id"]
        ),
        Index("ix_credit_entries_grant", "tenant_id", "grant_id"),
        Index("ix_credit_entries_customer", "tenant_id", "customer_id", "seq"),
        Index("ix_credit_entries_invoice", "invoice_id", postgresql_where="invoice_id IS NOT NULL"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    grant_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    kind: Mapped[str] = mapped_column(
        String(16), comment="granted | topped_up | applied | reversed | expired | voided"
    )
    amount: Mapped[int] = mapped_column(BigInteger, comment="signed minor units")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), comment="counts from then")
    invoice_id: Mapped[str | None] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(160), comment="unique per tenant: written once")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AutoTopUp(Base):
    __tablename__ = "credit_auto_top_ups"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    purchase_amount: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer)
    expires_after_days: Mapped[int | None] = mapped_column(Integer)
    armed: Mapped[bool] = mapped_column(
        Boolean, comment="false once it topped up, until the balance is above the threshold"
    )
    count: Mapped[int] = mapped_column(Integer, default=0, comment="top-ups so far")


class Commitment(Base):
    __tablename__ = "commitments"
    __table_args__ = (Index("ix_commitments_end", "end"),)

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    description: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CommitmentEntry(Base):
    __tablename__ = "commitment_entries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key", name="uq_commitment_entries_key"),
        ForeignKeyConstraint(
            ["tenant_id", "commitment_id"], ["commitments.tenant_id", "commitments.id"]
        ),
        Index("ix_commitment_entries_commitment", "tenant_id", "commitment_id"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    commitment_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), comment="drawn | reversed | trued_up")
    amount: Mapped[int] = mapped_column(BigInteger, comment="drawn: -, reversed: +, trued_up: -")
    invoice_id: Mapped[str | None] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(160))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CommitmentState(NamedTuple):
    commitment: Commitment
    drawn: int  # what invoices drew (draws less reversals), minor units
    trued_up: bool
    true_up_invoice_id: str | None

    @property
    def left(self) -> int:
        return self.commitment.amount - self.drawn

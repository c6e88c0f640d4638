"""Credit notes' tables (ORM models only; the SQL is in ``credit_notes.py``): the notes
(immutable but for their status), their lines, and their per-tenant, per-year counters."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
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
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class CreditNote(Base):
    __tablename__ = "credit_notes"
    __table_args__ = (
        UniqueConstraint("tenant_id", "number", name="uq_credit_notes_number"),
        Index("ix_credit_notes_invoice", "tenant_id", "invoice_id"),
        Index("ix_credit_notes_customer", "tenant_id", "customer_id"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[str] = mapped_column(String(40))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(32))
    memo: Mapped[str | None] = mapped_column(Text)
    settle: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(8), comment="issued | void")
    subtotal: Mapped[int] = mapped_column(BigInteger)
    tax: Mapped[int] = mapped_column(BigInteger)
    tax_breakdown: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default="[]", comment="per rate (schemas.taxes.TaxAmount)"
    )
    total: Mapped[int] = mapped_column(BigInteger)
    amount_reducing_due: Mapped[int] = mapped_column(BigInteger)
    amount_credits_returned: Mapped[int] = mapped_column(BigInteger)
    refund_amount: Mapped[int] = mapped_column(BigInteger)
    amount_credited_to_balance: Mapped[int] = mapped_column(BigInteger)
    grant_id: Mapped[str | None] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    void_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CreditNoteLineRow(Base):
    __tablename__ = "credit_note_lines"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "credit_note_id"],
            ["credit_notes.tenant_id", "credit_notes.id"],
            ondelete="CASCADE",
        ),
    )

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    credit_note_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    line: Mapped[int | None] = mapped_column(
        Integer, comment="the invoice line's position; None: an amount note"
    )
    description: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger, comment="excluding tax")
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric)
    tax: Mapped[int] = mapped_column(BigInteger)
    taxes: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default="[]", comment="per rate (schemas.taxes.TaxAmount)"
    )


class CreditNoteSequence(Base):
    __tablename__ = "credit_note_sequences"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)

"""Discounts' tables (ORM models only; the SQL is in ``discounts.py``): coupons and promotion
codes (immutable terms, with their redemption counts), discounts (a coupon redeemed for a
customer or one of its subscriptions) and their applications to invoices (one row per
discount and invoice: the count of them is how ``once`` and ``repeating`` end, and their
uniqueness is what makes a replay or a retry after kill -9 write nothing twice)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class Coupon(Base):
    __tablename__ = "coupons"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="the CouponSpec, as created")
    times_redeemed: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0", comment="discounts applied with it"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PromotionCode(Base):
    __tablename__ = "promotion_codes"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "coupon_id"], ["coupons.tenant_id", "coupons.id"]),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    code_key: Mapped[str] = mapped_column(
        String(64), primary_key=True, comment="the code in lower case: unique per tenant"
    )
    code: Mapped[str] = mapped_column(String(64), comment="as created")
    coupon_id: Mapped[str] = mapped_column(String(64))
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    times_redeemed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Discount(Base):
    __tablename__ = "discounts"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "coupon_id"], ["coupons.tenant_id", "coupons.id"]),
        Index("ix_discounts_customer", "tenant_id", "customer_id"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    subscription_id: Mapped[str | None] = mapped_column(
        String(64), comment="None: every subscription of the customer"
    )
    coupon_id: Mapped[str] = mapped_column(String(64))
    promotion_code: Mapped[str | None] = mapped_column(String(64), comment="as redeemed")
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DiscountApplication(Base):
    __tablename__ = "discount_applications"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "discount_id", "invoice_id", name="uq_discount_applications_invoice"
        ),
        ForeignKeyConstraint(["tenant_id", "discount_id"], ["discounts.tenant_id", "discounts.id"]),
        Index("ix_discount_applications_invoice", "invoice_id"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    discount_id: Mapped[str] = mapped_column(String(64))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    amount: Mapped[int] = mapped_column(
        BigInteger, comment="what it took off the invoice, minor units (>= 0)"
    )
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

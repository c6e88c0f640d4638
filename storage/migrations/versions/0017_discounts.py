"""coupons, promotion codes, discounts and their applications

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(length=63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    )


def _created() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "coupons",
        _tenant(),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False, comment="the CouponSpec, as created"),
        sa.Column(
            "times_redeemed",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="discounts applied with it",
        ),
        _created(),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_coupons")),
    )
    op.create_table(
        "promotion_codes",
        _tenant(),
        sa.Column(
            "code_key",
            sa.String(length=64),
            nullable=False,
            comment="the code in lower case: unique per tenant",
        ),
        sa.Column("code", sa.String(length=64), nullable=False, comment="as created"),
        sa.Column("coupon_id", sa.String(length=64), nullable=False),
        sa.Column("max_redemptions", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("times_redeemed", sa.Integer(), server_default="0", nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("tenant_id", "code_key", name=op.f("pk_promotion_codes")),
        sa.ForeignKeyConstraint(["tenant_id", "coupon_id"], ["coupons.tenant_id", "coupons.id"]),
    )
    op.create_table(
        "discounts",
        _tenant(),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column(
            "customer_id", sa.String(length=36), sa.ForeignKey("customers.id"), nullable=False
        ),
        sa.Column(
            "subscription_id",
            sa.String(length=64),
            nullable=True,
            comment="None: every subscription of the customer",
        ),
        sa.Column("coupon_id", sa.String(length=64), nullable=False),
        sa.Column("promotion_code", sa.String(length=64), nullable=True, comment="as redeemed"),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_discounts")),
        sa.ForeignKeyConstraint(["tenant_id", "coupon_id"], ["coupons.tenant_id", "coupons.id"]),
    )
    op.create_index("ix_discounts_customer", "discounts", ["tenant_id", "customer_id"])
    op.create_table(
        "discount_applications",
        sa.Column("seq", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("discount_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.String(length=36), sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column(
            "amount",
            sa.BigInteger(),
            nullable=False,
            comment="what it took off the invoice, minor units (>= 0)",
        ),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_discount_applications")),
        sa.UniqueConstraint(
            "tenant_id", "discount_id", "invoice_id", name="uq_discount_applications_invoice"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "discount_id"], ["discounts.tenant_id", "discounts.id"]
        ),
    )
    op.create_index("ix_discount_applications_invoice", "discount_applications", ["invoice_id"])


def downgrade() -> None:
    op.drop_table("discount_applications")
    op.drop_table("discounts")
    op.drop_table("promotion_codes")
    op.drop_table("coupons")

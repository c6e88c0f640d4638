"""The entitlements tables (migration 0025): features, what plans, overrides and grants give
of them, the read model a check is answered from, and the deployment's token signing keys."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


def _tenant() -> Mapped[str]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)


class FeatureRow(Base):
    __tablename__ = "entitlement_features"

    tenant_id: Mapped[str] = _tenant()
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16), comment="boolean | config | metered")
    meter: Mapped[str | None] = mapped_column(String(64), comment="metered: the meter's key")
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PlanGrantRow(Base):
    """One feature of one plan (``SetPlanEntitlements`` replaces a plan's rows)."""

    __tablename__ = "entitlement_plan_grants"

    tenant_id: Mapped[str] = _tenant()
    plan: Mapped[str] = mapped_column(String(64), primary_key=True, comment="the plan's key")
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    limit: Mapped[Decimal | None] = mapped_column(Numeric, comment="none: unlimited")
    limit_mode: Mapped[str] = mapped_column(String(8), comment="soft | hard")


class OverrideRow(Base):
    __tablename__ = "entitlement_overrides"

    tenant_id: Mapped[str] = _tenant()
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    limit: Mapped[Decimal | None] = mapped_column(Numeric, comment="none: unlimited")
    limit_mode: Mapped[str] = mapped_column(String(8), comment="soft | hard")


class GrantRow(Base):
    __tablename__ = "entitlement_grants"
    __table_args__ = (
        Index("ix_entitlement_grants_customer", "tenant_id", "customer"),
        Index("ix_entitlement_grants_due", "due_at", postgresql_where=text("due_at IS NOT NULL")),
    )

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256))
    feature: Mapped[str] = mapped_column(String(64))
    units: Mapped[Decimal | None] = mapped_column(Numeric)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True),
        comment="its next start or expiry not announced yet (the worker's tick announces it)",
    )


class SubscriptionRow(Base):
    """A customer's subscription as the ``subscription.*`` events describe it."""

    __tablename__ = "entitlement_subscriptions"
    __table_args__ = (
        Index("ix_entitlement_subscriptions_customer", "tenant_id", "customer"),
        Index(
            "ix_entitlement_subscriptions_plan",
            "tenant_id",
            "plan",
            postgresql_where=text("status = 'active'"),
        ),
    )

    tenant_id: Mapped[str] = _tenant()
    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256))
    plan: Mapped[str] = mapped_column(String(64))
    interval: Mapped[str] = mapped_column(String(8), comment="the plan's: month | year")
    status: Mapped[str] = mapped_column(String(16), comment="active | ended")
    current_period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConfigRow(Base):
    __tablename__ = "entitlement_configs"

    tenant_id: Mapped[str] = _tenant()
    payment_grace_hours: Mapped[int] = mapped_column(Integer)
    token_ttl_seconds: Mapped[int] = mapped_column(Integer)
    rate_limit_feature: Mapped[str | None] = mapped_column(String(64))


class UnpaidRow(Base):
    """An invoice of the customer whose payment failed and which is not paid yet."""

    __tablename__ = "entitlement_unpaid"
    __table_args__ = (Index("ix_entitlement_unpaid_customer", "tenant_id", "customer"),)

    tenant_id: Mapped[str] = _tenant()
    invoice_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256))
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), comment="the first failure: the grace counts from here"
    )
    exhausted: Mapped[bool] = mapped_column(Boolean, comment="dunning gave up on it")


class StandingRow(Base):
    """What was last announced of the customer's access: its standing (``active``,
    ``payment_pending`` or ``suspended``) and the features it had, so the worker emits
    ``entitlement.*`` events for what changed, once."""

    __tablename__ = "entitlement_standing"

    tenant_id: Mapped[str] = _tenant()
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    features: Mapped[list[str]] = mapped_column(JSONB, comment="keys with access, sorted")
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StaleRow(Base):
    """A customer whose access must be announced again (its plan's entitlements or its
    tenant's grace changed): the worker's tick announces them in chunks."""

    __tablename__ = "entitlement_stale"

    tenant_id: Mapped[str] = _tenant()
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), comment="granted/revoked reason to announce")
    marked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRow(Base):
    """The customer's usage of a meter over one billing period (every hour of it summed as
    metering counts it), set from metering's totals each time they change."""

    __tablename__ = "entitlement_usage"

    tenant_id: Mapped[str] = _tenant()
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    usage: Mapped[Decimal] = mapped_column(Numeric)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LimitHitRow(Base):
    """A metered feature's limit reached in a period: ``entitlement.limit_reached`` is
    emitted by the transaction that inserts it, so once; ``restored_at``: the hard limit no
    longer denies (raised, or the period ended) and ``entitlement.restored`` was emitted."""

    __tablename__ = "entitlement_limit_hits"
    __table_args__ = (
        Index(
            "ix_entitlement_limit_hits_open",
            "period_end",
            postgresql_where=text("restored_at IS NULL AND limit_mode = 'hard'"),
        ),
    )

    tenant_id: Mapped[str] = _tenant()
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    usage: Mapped[Decimal] = mapped_column(Numeric)
    limit: Mapped[Decimal] = mapped_column(Numeric)
    limit_mode: Mapped[str] = mapped_column(String(8))
    reached_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    restored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SigningKeyRow(Base):
    """The deployment's Ed25519 keys for entitlement tokens (private keys Fernet-encrypted
    under ``BILLSTREAM_SECRETS_KEY``); one current (``retired_at`` null)."""

    __tablename__ = "entitlement_keys"
    __table_args__ = (
        Index(
            "ux_entitlement_keys_current",
            "current",
            unique=True,
            postgresql_where=text("retired_at IS NULL"),
        ),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True, comment="RFC 7638 thumbprint")
    current: Mapped[bool | None] = mapped_column(
        Boolean, server_default=text("true"), comment="true while current, then null"
    )
    public_key: Mapped[str] = mapped_column(String(64), comment="Ed25519, raw, base64url")
    private_key: Mapped[str] = mapped_column(Text, comment="Fernet ciphertext (enc:…)")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

"""Entitlements: features, what plans, overrides and grants give of them, and the read model
a check is answered from (docs/entitlements.md).

The read model is kept current by the entitlements worker from events: the customers'
subscriptions (``subscription.*``), their unpaid invoices (``payment.failed``,
``payment.dunning_exhausted``, ``invoice.paid``/``voided``), and their usage in the current
period of every meter a feature counts (``usage.totals_changed``). A check reads it
(``EntitlementRepository.snapshot``, a handful of indexed reads) and never aggregates usage.

The token signing keys (``entitlement_keys``) belong to the deployment, not to a tenant:
one JWKS at ``/.well-known/jwks.json`` serves every gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
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
    __table_args__ = (Index("ix_entitlement_grants_customer", "tenant_id", "customer"),)

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256))
    feature: Mapped[str] = mapped_column(String(64))
    units: Mapped[Decimal | None] = mapped_column(Numeric)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SubscriptionRow(Base):
    """A customer's subscription as the ``subscription.*`` events describe it."""

    __tablename__ = "entitlement_subscriptions"
    __table_args__ = (Index("ix_entitlement_subscriptions_customer", "tenant_id", "customer"),)

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


# --- what a check reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything one customer's entitlements are computed from, as stored."""

    tenant_id: str
    customer: str
    features: Sequence[FeatureRow]
    subscriptions: Sequence[SubscriptionRow]  # active ones
    plan_grants: Sequence[PlanGrantRow]  # of those subscriptions' plans
    overrides: Sequence[OverrideRow]
    grants: Sequence[GrantRow]  # in force at the snapshot's time, or later
    usage: Sequence[UsageRow]  # of the metered features' meters, latest periods
    unpaid: Sequence[UnpaidRow]
    config: ConfigRow | None


class EntitlementRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def features(self, tenant_id: str) -> list[FeatureRow]:
        rows = await self.session.scalars(
            select(FeatureRow).where(FeatureRow.tenant_id == tenant_id).order_by(FeatureRow.key)
        )
        return list(rows)

    async def feature(self, tenant_id: str, key: str) -> FeatureRow | None:
        return await self.session.get(FeatureRow, (tenant_id, key))

    async def config(self, tenant_id: str) -> ConfigRow | None:
        return await self.session.get(ConfigRow, tenant_id)

    async def snapshot(
        self, tenant_id: str, customer: str, at: datetime, *, feature: str | None = None
    ) -> Snapshot:
        """``customer``'s entitlements as stored (``feature``: that one only)."""
        s = self.session
        f = select(FeatureRow).where(FeatureRow.tenant_id == tenant_id)
        if feature is not None:
            f = f.where(FeatureRow.key == feature)
        features = list(await s.scalars(f.order_by(FeatureRow.key)))
        subs = list(
            await s.scalars(
                select(SubscriptionRow)
                .where(
                    SubscriptionRow.tenant_id == tenant_id,
                    SubscriptionRow.customer == customer,
                    SubscriptionRow.status == "active",
                )
                .order_by(SubscriptionRow.current_period_start, SubscriptionRow.subscription_id)
            )
        )
        plans = sorted({sub.plan for sub in subs})
        keys = [x.key for x in features]
        plan_grants = (
            list(
                await s.scalars(
                    select(PlanGrantRow).where(
                        PlanGrantRow.tenant_id == tenant_id,
                        PlanGrantRow.plan.in_(plans),
                        PlanGrantRow.feature.in_(keys),
                    )
                )
            )
            if plans and keys
            else []
        )
        overrides = list(
            await s.scalars(
                select(OverrideRow).where(
                    OverrideRow.tenant_id == tenant_id,
                    OverrideRow.customer == customer,
                    OverrideRow.feature.in_(keys),
                )
            )
        )
        grants = list(
            await s.scalars(
                select(GrantRow).where(
                    GrantRow.tenant_id == tenant_id,
                    GrantRow.customer == customer,
                    GrantRow.feature.in_(keys),
                    or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > at),
                )
            )
        )
        meters = sorted({x.meter for x in features if x.meter is not None})
        usage = (
            list(
                await s.scalars(
                    select(UsageRow).where(
                        UsageRow.tenant_id == tenant_id,
                        UsageRow.customer == customer,
                        UsageRow.meter.in_(meters),
                        UsageRow.period_end > at,
                    )
                )
            )
            if meters
            else []
        )
        unpaid = list(
            await s.scalars(
                select(UnpaidRow).where(
                    UnpaidRow.tenant_id == tenant_id, UnpaidRow.customer == customer
                )
            )
        )
        return Snapshot(
            tenant_id,
            customer,
            features,
            subs,
            plan_grants,
            overrides,
            grants,
            usage,
            unpaid,
            await self.config(tenant_id),
        )

    # --- the token signing keys (the deployment's, not a tenant's) ----------------------------

    async def current_signing_key(self) -> SigningKeyRow | None:
        row: SigningKeyRow | None = await self.session.scalar(
            select(SigningKeyRow).where(SigningKeyRow.retired_at.is_(None))
        )
        return row

    async def published_keys(self, retired_after: datetime) -> list[SigningKeyRow]:
        """The current key and those retired after ``retired_after`` (tokens they signed may
        still be valid), oldest first."""
        rows = await self.session.scalars(
            select(SigningKeyRow)
            .where(
                or_(SigningKeyRow.retired_at.is_(None), SigningKeyRow.retired_at > retired_after)
            )
            .order_by(SigningKeyRow.created_at, SigningKeyRow.kid)
        )
        return list(rows)

    async def rotate_signing_key(
        self, kid: str, public_key: str, private_key: str, now: datetime
    ) -> bool:
        """Retire the current key (if any) and make this one current, at ``now``; False when
        another writer rotated first (this transaction then changes nothing it keeps)."""
        await self.session.execute(
            update(SigningKeyRow)
            .where(SigningKeyRow.retired_at.is_(None))
            .values(retired_at=now, current=None)
        )
        added = await self.session.execute(
            insert(SigningKeyRow)
            .values(kid=kid, public_key=public_key, private_key=private_key, created_at=now)
            .on_conflict_do_nothing()
            .returning(SigningKeyRow.kid)
        )
        return added.first() is not None

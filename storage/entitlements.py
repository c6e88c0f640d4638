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

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.entitlements import EntitlementsConfig
from storage.db import Base
from storage.invoicing.models import Customer, Plan
from storage.quarantine import not_quarantined


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
    customer_known: bool = True  # in invoicing's customers (read by the check's statement)


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
        """``customer``'s entitlements as stored (``feature``: that one only), in this
        transaction: one statement, one round trip (``read_snapshot`` runs it outside any
        transaction for a check; ``snapshots`` reads many customers)."""
        conn = await self.session.connection()
        result = await conn.exec_driver_sql(_SNAPSHOT, (tenant_id, customer, at, feature))
        return _snapshot(tenant_id, customer, tuple(result.one()))

    async def snapshots(
        self, pairs: Iterable[tuple[str, str]], at: datetime, *, feature: str | None = None
    ) -> dict[tuple[str, str], Snapshot]:
        """The snapshots of these (tenant, customer) pairs: eight queries for any number."""
        keys = sorted(set(pairs))
        if not keys:
            return {}
        s = self.session
        tenants = sorted({t for t, _ in keys})
        f = select(FeatureRow).where(FeatureRow.tenant_id.in_(tenants))
        if feature is not None:
            f = f.where(FeatureRow.key == feature)
        features: dict[str, list[FeatureRow]] = {t: [] for t in tenants}
        for row in await s.scalars(f.order_by(FeatureRow.tenant_id, FeatureRow.key)):
            features[row.tenant_id].append(row)

        def of(model: Any) -> Any:
            v = _pairs(keys)
            return select(model).join(v, and_(model.tenant_id == v.c.t, model.customer == v.c.c))

        subs = list(
            await s.scalars(
                of(SubscriptionRow)
                .where(SubscriptionRow.status == "active")
                .order_by(SubscriptionRow.current_period_start, SubscriptionRow.subscription_id)
            )
        )
        plans = sorted({(x.tenant_id, x.plan) for x in subs})
        plan_grants: list[PlanGrantRow] = []
        if plans:
            v = _pairs(plans)
            plan_grants = list(
                await s.scalars(
                    select(PlanGrantRow).join(
                        v, and_(PlanGrantRow.tenant_id == v.c.t, PlanGrantRow.plan == v.c.c)
                    )
                )
            )
        overrides = list(await s.scalars(of(OverrideRow)))
        grants = list(
            await s.scalars(
                of(GrantRow).where(or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > at))
            )
        )
        usage = list(await s.scalars(of(UsageRow).where(UsageRow.period_end > at)))
        unpaid = list(await s.scalars(of(UnpaidRow)))
        configs = {
            c.tenant_id: c
            for c in await s.scalars(select(ConfigRow).where(ConfigRow.tenant_id.in_(tenants)))
        }
        by: dict[tuple[str, str], dict[str, list[Any]]] = {
            k: {"subs": [], "grants": [], "overrides": [], "usage": [], "unpaid": []} for k in keys
        }
        for sub in subs:
            by[(sub.tenant_id, sub.customer)]["subs"].append(sub)
        for o in overrides:
            by[(o.tenant_id, o.customer)]["overrides"].append(o)
        for g in grants:
            by[(g.tenant_id, g.customer)]["grants"].append(g)
        for u in usage:
            by[(u.tenant_id, u.customer)]["usage"].append(u)
        for p in unpaid:
            by[(p.tenant_id, p.customer)]["unpaid"].append(p)
        out: dict[tuple[str, str], Snapshot] = {}
        for (tenant, customer), rows in by.items():
            fs = features[tenant]
            known = {x.key for x in fs}
            meters = {x.meter for x in fs if x.meter is not None}
            mine = {sub.plan for sub in rows["subs"]}
            out[(tenant, customer)] = Snapshot(
                tenant,
                customer,
                fs,
                rows["subs"],
                [
                    g
                    for g in plan_grants
                    if g.tenant_id == tenant and g.plan in mine and g.feature in known
                ],
                [o for o in rows["overrides"] if o.feature in known],
                [g for g in rows["grants"] if g.feature in known],
                [u for u in rows["usage"] if u.meter in meters],
                rows["unpaid"],
                configs.get(tenant),
            )
        return out

    # --- features, plans, overrides, grants, configuration -----------------------------------

    async def count_features(self, tenant_id: str) -> int:
        n = await self.session.scalar(
            select(func.count()).select_from(FeatureRow).where(FeatureRow.tenant_id == tenant_id)
        )
        return int(n or 0)

    async def features_by_key(self, tenant_id: str, keys: Iterable[str]) -> dict[str, FeatureRow]:
        rows = await self.session.scalars(
            select(FeatureRow).where(
                FeatureRow.tenant_id == tenant_id, FeatureRow.key.in_(set(keys))
            )
        )
        return {r.key: r for r in rows}

    async def add_feature(
        self,
        tenant_id: str,
        key: str,
        name: str,
        kind: str,
        meter: str | None,
        description: str | None,
    ) -> bool:
        """Insert the feature; False when the key is taken (the caller compares)."""
        added = await self.session.execute(
            insert(FeatureRow)
            .values(
                tenant_id=tenant_id,
                key=key,
                name=name,
                kind=kind,
                meter=meter,
                description=description,
            )
            .on_conflict_do_nothing()
            .returning(FeatureRow.key)
        )
        return added.first() is not None

    async def rename_feature(
        self, tenant_id: str, key: str, name: str, description: str | None
    ) -> None:
        await self.session.execute(
            update(FeatureRow)
            .where(FeatureRow.tenant_id == tenant_id, FeatureRow.key == key)
            .values(name=name, description=description)
        )

    async def plan_grants(self, tenant_id: str, plan: str) -> list[PlanGrantRow]:
        rows = await self.session.scalars(
            select(PlanGrantRow)
            .where(PlanGrantRow.tenant_id == tenant_id, PlanGrantRow.plan == plan)
            .order_by(PlanGrantRow.feature)
        )
        return list(rows)

    async def set_plan_grants(
        self, tenant_id: str, plan: str, grants: Sequence[dict[str, Any]]
    ) -> None:
        """Replace the plan's features with ``grants`` (columns feature, config, limit,
        limit_mode)."""
        await self.session.execute(
            delete(PlanGrantRow).where(
                PlanGrantRow.tenant_id == tenant_id, PlanGrantRow.plan == plan
            )
        )
        if grants:
            await self.session.execute(
                insert(PlanGrantRow).values(
                    [{"tenant_id": tenant_id, "plan": plan, **g} for g in grants]
                )
            )

    async def set_override(self, tenant_id: str, customer: str, **columns: Any) -> None:
        row = {"tenant_id": tenant_id, "customer": customer, **columns}
        stmt = insert(OverrideRow).values(row)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "customer", "feature"],
                set_={k: stmt.excluded[k] for k in ("enabled", "config", "limit", "limit_mode")},
            )
        )

    async def remove_override(self, tenant_id: str, customer: str, feature: str) -> bool:
        gone = await self.session.execute(
            delete(OverrideRow)
            .where(
                OverrideRow.tenant_id == tenant_id,
                OverrideRow.customer == customer,
                OverrideRow.feature == feature,
            )
            .returning(OverrideRow.feature)
        )
        return gone.first() is not None

    async def grant(self, tenant_id: str, id: str) -> GrantRow | None:
        return await self.session.get(GrantRow, (tenant_id, id))

    async def count_live_grants(self, tenant_id: str, customer: str, at: datetime) -> int:
        """The customer's grants not expired at ``at`` (in force, or to come)."""
        n = await self.session.scalar(
            select(func.count())
            .select_from(GrantRow)
            .where(
                GrantRow.tenant_id == tenant_id,
                GrantRow.customer == customer,
                or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > at),
            )
        )
        return int(n or 0)

    async def add_grant(self, **columns: Any) -> bool:
        """Insert a grant; False when its id is taken (the caller compares)."""
        added = await self.session.execute(
            insert(GrantRow).values(**columns).on_conflict_do_nothing().returning(GrantRow.id)
        )
        return added.first() is not None

    async def set_config(self, tenant_id: str, **columns: Any) -> None:
        stmt = insert(ConfigRow).values(tenant_id=tenant_id, **columns)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id"], set_={k: stmt.excluded[k] for k in columns}
            )
        )

    # --- what other contexts hold -------------------------------------------------------------

    async def customer_exists(self, tenant_id: str, external_id: str) -> bool:
        """Whether invoicing knows the customer (read only: no lock on its row)."""
        found = await self.session.scalar(
            select(Customer.id).where(
                Customer.tenant_id == tenant_id, Customer.external_id == external_id
            )
        )
        return found is not None

    async def plan_intervals(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Invoicing's plans' billing intervals by (tenant, plan key)."""
        keys = sorted(set(pairs))
        if not keys:
            return {}
        v = _pairs(keys)
        rows = await self.session.execute(
            select(Plan.tenant_id, Plan.key, Plan.interval).join(
                v, and_(Plan.tenant_id == v.c.t, Plan.key == v.c.c)
            )
        )
        return {(t, k): i for t, k, i in rows}

    # --- what the events tell -----------------------------------------------------------------

    async def upsert_subscription(self, tenant_id: str, **columns: Any) -> None:
        stmt = insert(SubscriptionRow).values(tenant_id=tenant_id, **columns)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "subscription_id"],
                set_={k: stmt.excluded[k] for k in columns if k != "subscription_id"},
            )
        )

    async def payment_failed(
        self, tenant_id: str, invoice_id: str, customer: str, at: datetime
    ) -> None:
        """The invoice unpaid from its earliest failure."""
        stmt = insert(UnpaidRow).values(
            tenant_id=tenant_id, invoice_id=invoice_id, customer=customer, failed_at=at,
            exhausted=False,
        )  # fmt: skip
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "invoice_id"],
                set_={"failed_at": func.least(UnpaidRow.failed_at, stmt.excluded.failed_at)},
            )
        )

    async def exhausted(self, tenant_id: str, invoice_id: str, customer: str, at: datetime) -> None:
        """Dunning gave up on the invoice (or it was marked uncollectible)."""
        stmt = insert(UnpaidRow).values(
            tenant_id=tenant_id, invoice_id=invoice_id, customer=customer, failed_at=at,
            exhausted=True,
        )  # fmt: skip
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "invoice_id"], set_={"exhausted": True}
            )
        )

    async def settled(self, tenant_id: str, invoice_id: str) -> bool:
        """The invoice paid or voided: no longer unpaid. True if it was."""
        gone = await self.session.execute(
            delete(UnpaidRow)
            .where(UnpaidRow.tenant_id == tenant_id, UnpaidRow.invoice_id == invoice_id)
            .returning(UnpaidRow.invoice_id)
        )
        return gone.first() is not None

    # --- usage and limits ---------------------------------------------------------------------

    async def metered_meters(self, tenants: Iterable[str]) -> set[tuple[str, str]]:
        """The (tenant, meter) pairs a metered feature counts."""
        rows = await self.session.execute(
            select(FeatureRow.tenant_id, FeatureRow.meter)
            .where(
                FeatureRow.tenant_id.in_(set(tenants)),
                FeatureRow.kind == "metered",
                FeatureRow.meter.is_not(None),
            )
            .distinct()
        )
        return {(t, m) for t, m in rows if m is not None}

    async def set_usage(self, rows: Sequence[UsageTotal], now: datetime) -> None:
        """Set each (tenant, customer, meter, period)'s usage: one statement."""
        if not rows:
            return
        await self.session.execute(
            _SET_USAGE,
            {
                "t": [r.tenant_id for r in rows],
                "c": [r.customer for r in rows],
                "m": [r.meter for r in rows],
                "ps": [r.period_start for r in rows],
                "pe": [r.period_end for r in rows],
                "u": [r.usage for r in rows],
                "now": now,
            },
        )

    async def record_hits(self, hits: Sequence[Hit], now: datetime) -> list[Hit]:
        """The hits not recorded yet (or restored since): recorded now, returned once."""
        if not hits:
            return []
        found = await self.session.execute(
            _RECORD_HITS,
            {
                "t": [h.tenant_id for h in hits],
                "c": [h.customer for h in hits],
                "f": [h.feature for h in hits],
                "ps": [h.period_start for h in hits],
                "pe": [h.period_end for h in hits],
                "u": [h.usage for h in hits],
                "l": [h.limit for h in hits],
                "m": [h.limit_mode for h in hits],
                "now": now,
            },
        )
        fresh = {tuple(r) for r in found}
        return [h for h in hits if (h.tenant_id, h.customer, h.feature, h.period_start) in fresh]

    async def open_hits(self, pairs: Iterable[tuple[str, str]]) -> list[LimitHitRow]:
        """The hard limit hits of these customers that still deny (not restored)."""
        keys = sorted(set(pairs))
        if not keys:
            return []
        v = _pairs(keys)
        rows = await self.session.scalars(
            select(LimitHitRow)
            .join(v, and_(LimitHitRow.tenant_id == v.c.t, LimitHitRow.customer == v.c.c))
            .where(LimitHitRow.restored_at.is_(None), LimitHitRow.limit_mode == "hard")
        )
        return list(rows)

    async def restore_hits(self, hits: Sequence[LimitHitRow], now: datetime) -> None:
        for h in hits:
            await self.session.execute(
                update(LimitHitRow)
                .where(
                    LimitHitRow.tenant_id == h.tenant_id,
                    LimitHitRow.customer == h.customer,
                    LimitHitRow.feature == h.feature,
                    LimitHitRow.period_start == h.period_start,
                )
                .values(restored_at=now)
            )

    # --- what was announced -------------------------------------------------------------------

    async def standings(
        self, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], StandingRow]:
        keys = sorted(set(pairs))
        if not keys:
            return {}
        rows = await self.session.scalars(of_pairs(StandingRow, keys))
        return {(r.tenant_id, r.customer): r for r in rows}

    async def save_standings(
        self, rows: Sequence[tuple[str, str, str, list[str]]], now: datetime
    ) -> None:
        """(tenant, customer, status, features) as announced now."""
        if not rows:
            return
        await self.session.execute(
            _SAVE_STANDINGS,
            {
                "t": [r[0] for r in rows],
                "c": [r[1] for r in rows],
                "s": [r[2] for r in rows],
                "f": [json.dumps(r[3]) for r in rows],
                "now": now,
            },
        )

    async def mark_stale_plan(self, tenant_id: str, plan: str, reason: str, now: datetime) -> None:
        """Every customer with an active subscription on the plan: one statement."""
        await self.session.execute(
            _STALE_PLAN, {"t": tenant_id, "p": plan, "r": reason, "now": now}
        )

    async def mark_stale_unpaid(self, tenant_id: str, reason: str, now: datetime) -> None:
        """Every customer of the tenant with an unpaid invoice (its grace changed)."""
        await self.session.execute(_STALE_UNPAID, {"t": tenant_id, "r": reason, "now": now})

    # --- the worker's tick (claims: rows locked, quarantined items left out) ------------------

    async def claim_stale(
        self, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str, str]]:
        q = select(StaleRow.tenant_id, StaleRow.customer, StaleRow.reason).where(
            not_quarantined(job, "customer", StaleRow.tenant_id, StaleRow.customer)
        )
        if only is not None:
            v = _pairs(only)
            q = q.join(v, and_(StaleRow.tenant_id == v.c.t, StaleRow.customer == v.c.c))
        rows = await self.session.execute(
            q.order_by(StaleRow.marked_at).limit(limit).with_for_update(skip_locked=True)
        )
        return [(t, c, r) for t, c, r in rows]

    async def unmark_stale(self, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            v = _pairs(pairs)
            await self.session.execute(
                delete(StaleRow).where(StaleRow.tenant_id == v.c.t, StaleRow.customer == v.c.c)
            )

    async def claim_graces_ended(
        self, now: datetime, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        """Customers whose grace ended while their standing is still active."""
        grace = func.coalesce(ConfigRow.payment_grace_hours, DEFAULT_GRACE_HOURS)
        q = (
            select(UnpaidRow.tenant_id, UnpaidRow.customer)
            .outerjoin(ConfigRow, ConfigRow.tenant_id == UnpaidRow.tenant_id)
            .outerjoin(
                StandingRow,
                and_(
                    StandingRow.tenant_id == UnpaidRow.tenant_id,
                    StandingRow.customer == UnpaidRow.customer,
                ),
            )
            .where(
                UnpaidRow.exhausted.is_(False),
                UnpaidRow.failed_at + func.make_interval(0, 0, 0, 0, grace) <= now,
                or_(StandingRow.status.is_(None), StandingRow.status == "active"),
                not_quarantined(job, "customer", UnpaidRow.tenant_id, UnpaidRow.customer),
            )
        )
        if only is not None:
            v = _pairs(only)
            q = q.join(v, and_(UnpaidRow.tenant_id == v.c.t, UnpaidRow.customer == v.c.c))
        rows = await self.session.execute(
            q.order_by(UnpaidRow.failed_at)
            .limit(limit)
            .with_for_update(of=UnpaidRow, skip_locked=True)
        )
        return sorted({(t, c) for t, c in rows})

    async def claim_ended_hits(
        self, now: datetime, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[LimitHitRow]:
        """Hard limit hits of periods that ended, not restored yet."""
        q = select(LimitHitRow).where(
            LimitHitRow.restored_at.is_(None),
            LimitHitRow.limit_mode == "hard",
            LimitHitRow.period_end <= now,
            not_quarantined(job, "customer", LimitHitRow.tenant_id, LimitHitRow.customer),
        )
        if only is not None:
            v = _pairs(only)
            q = q.join(v, and_(LimitHitRow.tenant_id == v.c.t, LimitHitRow.customer == v.c.c))
        rows = await self.session.scalars(
            q.order_by(LimitHitRow.period_end).limit(limit).with_for_update(skip_locked=True)
        )
        return list(rows)

    async def claim_grants_due(
        self, now: datetime, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        """Customers with a grant that started or expired since it was last announced."""
        q = select(GrantRow.tenant_id, GrantRow.customer).where(
            GrantRow.due_at <= now,
            not_quarantined(job, "customer", GrantRow.tenant_id, GrantRow.customer),
        )
        if only is not None:
            v = _pairs(only)
            q = q.join(v, and_(GrantRow.tenant_id == v.c.t, GrantRow.customer == v.c.c))
        rows = await self.session.execute(
            q.order_by(GrantRow.due_at).limit(limit).with_for_update(of=GrantRow, skip_locked=True)
        )
        return sorted({(t, c) for t, c in rows})

    async def grants_announced(self, pairs: Sequence[tuple[str, str]], now: datetime) -> None:
        """The customers' grants due by ``now`` are announced: each waits for its next
        boundary (its start or expiry after ``now``), or for nothing."""
        if not pairs:
            return
        v = _pairs(pairs)
        await self.session.execute(
            update(GrantRow)
            .where(
                GrantRow.tenant_id == v.c.t,
                GrantRow.customer == v.c.c,
                GrantRow.due_at <= now,
            )
            .values(due_at=next_boundary(GrantRow.starts_at, GrantRow.expires_at, now))
        )

    # --- the token signing keys (the deployment's, not a tenant's) ----------------------------

    async def current_signing_key(self) -> SigningKeyRow | None:
        """The newest key (the one the next rotation retires)."""
        row: SigningKeyRow | None = await self.session.scalar(
            select(SigningKeyRow).where(SigningKeyRow.retired_at.is_(None))
        )
        return row

    async def signing_key(self, now: datetime, lead: timedelta) -> SigningKeyRow | None:
        """The key that signs at ``now``: the newest published for at least ``lead`` (so a
        gateway's cached JWKS already has it) and still signing; the newest of all when
        none is that old (the deployment's first key)."""
        rows = list(
            await self.session.scalars(
                select(SigningKeyRow)
                .where(or_(SigningKeyRow.retired_at.is_(None), SigningKeyRow.retired_at > now))
                .order_by(SigningKeyRow.created_at.desc(), SigningKeyRow.kid)
                .limit(2)
            )
        )
        return next((r for r in rows if r.created_at <= now - lead), rows[0] if rows else None)

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
        self, kid: str, public_key: str, private_key: str, now: datetime, lead: timedelta
    ) -> bool:
        """Publish this key from ``now``; it signs from ``now + lead``, when the current key
        (if any) stops signing. False when another writer rotated first (this transaction
        then changes nothing it keeps)."""
        await self.session.execute(
            update(SigningKeyRow)
            .where(SigningKeyRow.retired_at.is_(None))
            .values(retired_at=now + lead, current=None)
        )
        added = await self.session.execute(
            insert(SigningKeyRow)
            .values(kid=kid, public_key=public_key, private_key=private_key, created_at=now)
            .on_conflict_do_nothing()
            .returning(SigningKeyRow.kid)
        )
        return added.first() is not None


# --- set-based helpers --------------------------------------------------------------------

DEFAULT_GRACE_HOURS = EntitlementsConfig().payment_grace_hours


@dataclass(frozen=True)
class UsageTotal:
    tenant_id: str
    customer: str
    meter: str
    period_start: datetime
    period_end: datetime
    usage: Decimal


@dataclass(frozen=True)
class Hit:
    tenant_id: str
    customer: str
    feature: str
    period_start: datetime
    period_end: datetime
    usage: Decimal
    limit: Decimal
    limit_mode: str


def _pairs(pairs: Iterable[tuple[str, str]]) -> Any:
    """A derived table ``v(t, c)`` of the pairs (arrays: one bind parameter each)."""
    items = list(pairs)
    return (
        func.unnest(
            cast(bindparam(None, [a for a, _ in items], type_=ARRAY(Text)), ARRAY(Text)),
            cast(bindparam(None, [b for _, b in items], type_=ARRAY(Text)), ARRAY(Text)),
        )
        .table_valued("t", "c")
        .render_derived(name="v")
    )


def of_pairs(model: Any, pairs: Iterable[tuple[str, str]]) -> Any:
    """``select(model)`` of the rows of these (tenant, customer) pairs."""
    v = _pairs(pairs)
    return select(model).join(v, and_(model.tenant_id == v.c.t, model.customer == v.c.c))


def next_boundary(starts_at: Any, expires_at: Any, now: datetime) -> Any:
    """A grant's next start or expiry after ``now`` (null: none)."""
    return case((starts_at > now, starts_at), (expires_at > now, expires_at), else_=None)


_SET_USAGE = text(
    """
    INSERT INTO entitlement_usage
      (tenant_id, customer, meter, period_start, period_end, usage, updated_at)
    SELECT t, c, m, ps, pe, u, CAST(:now AS timestamptz)
    FROM unnest(CAST(:t AS text[]), CAST(:c AS text[]), CAST(:m AS text[]),
                CAST(:ps AS timestamptz[]), CAST(:pe AS timestamptz[]), CAST(:u AS numeric[]))
      AS v(t, c, m, ps, pe, u)
    ON CONFLICT (tenant_id, customer, meter, period_start) DO UPDATE
    SET usage = EXCLUDED.usage, period_end = EXCLUDED.period_end,
        updated_at = EXCLUDED.updated_at
    """
)
_RECORD_HITS = text(
    """
    INSERT INTO entitlement_limit_hits AS h
      (tenant_id, customer, feature, period_start, period_end, usage, "limit", limit_mode,
       reached_at)
    SELECT t, c, f, ps, pe, u, l, m, CAST(:now AS timestamptz)
    FROM unnest(CAST(:t AS text[]), CAST(:c AS text[]), CAST(:f AS text[]),
                CAST(:ps AS timestamptz[]), CAST(:pe AS timestamptz[]), CAST(:u AS numeric[]),
                CAST(:l AS numeric[]), CAST(:m AS text[]))
      AS v(t, c, f, ps, pe, u, l, m)
    ON CONFLICT (tenant_id, customer, feature, period_start) DO UPDATE
    SET restored_at = NULL, usage = EXCLUDED.usage, "limit" = EXCLUDED."limit",
        limit_mode = EXCLUDED.limit_mode, reached_at = EXCLUDED.reached_at
    WHERE h.restored_at IS NOT NULL
    RETURNING h.tenant_id, h.customer, h.feature, h.period_start
    """
)
_SAVE_STANDINGS = text(
    """
    INSERT INTO entitlement_standing (tenant_id, customer, status, features, changed_at)
    SELECT t, c, s, CAST(f AS jsonb), CAST(:now AS timestamptz)
    FROM unnest(CAST(:t AS text[]), CAST(:c AS text[]), CAST(:s AS text[]),
                CAST(:f AS text[])) AS v(t, c, s, f)
    ON CONFLICT (tenant_id, customer) DO UPDATE
    SET status = EXCLUDED.status, features = EXCLUDED.features,
        changed_at = EXCLUDED.changed_at
    """
)
_STALE_PLAN = text(
    """
    INSERT INTO entitlement_stale (tenant_id, customer, reason, marked_at)
    SELECT DISTINCT tenant_id, customer, CAST(:r AS text), CAST(:now AS timestamptz)
    FROM entitlement_subscriptions
    WHERE tenant_id = :t AND plan = :p AND status = 'active'
    ON CONFLICT (tenant_id, customer) DO UPDATE SET reason = EXCLUDED.reason
    """
)
_STALE_UNPAID = text(
    """
    INSERT INTO entitlement_stale (tenant_id, customer, reason, marked_at)
    SELECT DISTINCT tenant_id, customer, CAST(:r AS text), CAST(:now AS timestamptz)
    FROM entitlement_unpaid WHERE tenant_id = :t
    ON CONFLICT (tenant_id, customer) DO UPDATE SET reason = EXCLUDED.reason
    """
)


# --- one customer's snapshot in one statement (the check's hot path) ---------------------------

_SNAPSHOT = """
    WITH subs AS (
        SELECT * FROM entitlement_subscriptions
        WHERE tenant_id = $1 AND customer = $2 AND status = 'active'
    ), feats AS (
        SELECT * FROM entitlement_features
        WHERE tenant_id = $1 AND (CAST($4 AS text) IS NULL OR key = $4)
    )
    SELECT
      (SELECT json_agg(x ORDER BY x.key)::text FROM feats x),
      (SELECT json_agg(x ORDER BY x.current_period_start, x.subscription_id)::text
         FROM subs x),
      (SELECT json_agg(x)::text FROM entitlement_plan_grants x
         WHERE x.tenant_id = $1 AND x.plan IN (SELECT plan FROM subs)
           AND x.feature IN (SELECT key FROM feats)),
      (SELECT json_agg(x)::text FROM entitlement_overrides x
         WHERE x.tenant_id = $1 AND x.customer = $2 AND x.feature IN (SELECT key FROM feats)),
      (SELECT json_agg(x)::text FROM entitlement_grants x
         WHERE x.tenant_id = $1 AND x.customer = $2 AND x.feature IN (SELECT key FROM feats)
           AND (x.expires_at IS NULL OR x.expires_at > $3)),
      (SELECT json_agg(x)::text FROM entitlement_usage x
         WHERE x.tenant_id = $1 AND x.customer = $2 AND x.period_end > $3
           AND x.meter IN (SELECT meter FROM feats)),
      (SELECT json_agg(x)::text FROM entitlement_unpaid x
         WHERE x.tenant_id = $1 AND x.customer = $2),
      (SELECT json_agg(x)::text FROM entitlement_configs x WHERE x.tenant_id = $1),
      EXISTS (SELECT 1 FROM customers x WHERE x.tenant_id = $1 AND x.external_id = $2)
"""  # positional ($1 tenant, $2 customer, $3 at, $4 feature or null): asyncpg's own style
_SNAPSHOT_MODELS: tuple[type[Base], ...] = (
    FeatureRow,
    SubscriptionRow,
    PlanGrantRow,
    OverrideRow,
    GrantRow,
    UsageRow,
    UnpaidRow,
    ConfigRow,
)
_TIMES = frozenset(
    {
        "created_at",
        "starts_at",
        "expires_at",
        "due_at",
        "current_period_start",
        "current_period_end",
        "period_start",
        "period_end",
        "updated_at",
        "failed_at",
    }
)


async def read_snapshot(
    engine: AsyncEngine, tenant_id: str, customer: str, at: datetime, *, feature: str | None = None
) -> Snapshot:
    """``EntitlementRepository.snapshot`` without a session or a transaction: one statement
    straight on a pooled asyncpg connection (a single statement reads one consistent
    snapshot of the database). A check is the hottest read there is."""
    async with engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        row = await driver.fetchrow(_SNAPSHOT, tenant_id, customer, at, feature)
    return _snapshot(tenant_id, customer, tuple(row))


def _snapshot(tenant_id: str, customer: str, row: tuple[Any, ...]) -> Snapshot:
    *lists, exists = row
    features, subs, plan_grants, overrides, grants, usage, unpaid, config = (
        _rows(model, text_) for model, text_ in zip(_SNAPSHOT_MODELS, lists, strict=True)
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
        config[0] if config else None,
        customer_known=bool(exists),
    )


def _rows(model: Any, text_: str | None) -> list[Any]:
    """Transient rows of ``model`` from PostgreSQL's JSON of them: quantities exact
    (Decimal), times parsed, configurations as the JSONB column reads them."""
    if text_ is None:
        return []
    names = model.__table__.columns.keys()
    return [
        model(**{k: _value(k, v) for k, v in item.items() if k in names})
        for item in json.loads(text_, parse_float=Decimal)
    ]


_QUANTITIES = frozenset({"limit", "units", "usage"})


def _value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _TIMES:
        return datetime.fromisoformat(value)
    if name in _QUANTITIES:
        return Decimal(value)
    if name == "config":
        return _plain_json(value)
    return value


def _plain_json(value: Any) -> Any:
    """JSON as ``json.loads`` reads it (floats), from a parse that kept decimals."""
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return float(value) if isinstance(value, Decimal) else value

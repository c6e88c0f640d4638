"""The entitlements repository: every read and write of the worker and the API but the
check's one-statement snapshot (``snapshot.py``). Its parts by job: definitions and reads
here, the read model kept from events in ``readmodel.py``, the tick's claims and the signing
keys in ``tick.py``, set-based helpers in ``sets.py``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.entitlements.models import (
    ConfigRow,
    FeatureRow,
    GrantRow,
    OverrideRow,
    PlanGrantRow,
    SubscriptionRow,
    UnpaidRow,
    UsageRow,
)
from storage.entitlements.readmodel import ReadModel
from storage.entitlements.sets import (
    pairs_table,
)
from storage.entitlements.snapshot import SNAPSHOT, Snapshot, from_row
from storage.entitlements.tick import TickClaims
from storage.invoicing.models import Customer, Plan


class EntitlementRepository(ReadModel, TickClaims):
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
        result = await conn.exec_driver_sql(SNAPSHOT, (tenant_id, customer, at, feature))
        return from_row(tenant_id, customer, tuple(result.one()))

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
            v = pairs_table(keys)
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
            v = pairs_table(plans)
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
        v = pairs_table(keys)
        rows = await self.session.execute(
            select(Plan.tenant_id, Plan.key, Plan.interval).join(
                v, and_(Plan.tenant_id == v.c.t, Plan.key == v.c.c)
            )
        )
        return {(t, k): i for t, k, i in rows}

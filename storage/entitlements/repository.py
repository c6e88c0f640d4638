"""The entitlements repository: every read and write of the worker and the API but the
check's one-statement snapshot (``snapshot.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
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
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.entitlements import EntitlementsConfig
from storage.entitlements.models import (
    ConfigRow,
    FeatureRow,
    GrantRow,
    LimitHitRow,
    OverrideRow,
    PlanGrantRow,
    SigningKeyRow,
    StaleRow,
    StandingRow,
    SubscriptionRow,
    UnpaidRow,
    UsageRow,
)
from storage.entitlements.snapshot import SNAPSHOT, Snapshot, from_row
from storage.invoicing.models import Customer, Plan
from storage.quarantine import not_quarantined


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

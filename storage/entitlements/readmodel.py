"""What the entitlements worker keeps from events: subscriptions, unpaid invoices, usage in
the current period, limit hits and what was last announced (a part of
``EntitlementRepository``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.entitlements.models import (
    FeatureRow,
    LimitHitRow,
    StandingRow,
    SubscriptionRow,
    UnpaidRow,
)
from storage.entitlements.sets import (
    RECORD_HITS,
    SAVE_STANDINGS,
    SET_USAGE,
    STALE_PLAN,
    STALE_UNPAID,
    Hit,
    UsageTotal,
    of_pairs,
    pairs_table,
)


class ReadModel:
    session: AsyncSession  # EntitlementRepository's

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
            SET_USAGE,
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
            RECORD_HITS,
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
        v = pairs_table(keys)
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
            SAVE_STANDINGS,
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
        await self.session.execute(STALE_PLAN, {"t": tenant_id, "p": plan, "r": reason, "now": now})

    async def mark_stale_unpaid(self, tenant_id: str, reason: str, now: datetime) -> None:
        """Every customer of the tenant with an unpaid invoice (its grace changed)."""
        await self.session.execute(STALE_UNPAID, {"t": tenant_id, "r": reason, "now": now})

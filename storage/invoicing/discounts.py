"""Discounts' repository: all the SQL of coupons, promotion codes, discounts and their
applications (the models are in ``discount_models.py``, re-exported here).

Redemptions are counted under the coupon's row lock (``coupon(lock=True)``), then the
promotion code's; finalization locks the discounts it applies (``active``) after the
invoices it claimed. An application is unique per discount and invoice, so writing it twice
(a replay, a retry after kill -9) writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.discount_models import (
    Coupon,
    Discount,
    DiscountApplication,
    PromotionCode,
)

__all__ = [
    "Coupon",
    "Discount",
    "DiscountApplication",
    "DiscountRepository",
    "PromotionCode",
]


class DiscountRepository:
    """Every method takes the tenant or rows that carry it: no cross-tenant reads."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # coupons ---------------------------------------------------------------------------

    async def coupon(self, tenant_id: str, id: str, *, lock: bool = False) -> Coupon | None:
        q = select(Coupon).where(Coupon.tenant_id == tenant_id, Coupon.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def coupons_by_id(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Coupon]:
        keys = set(keys)
        if not keys:
            return {}
        rows = await self.session.scalars(
            select(Coupon).where(tuple_(Coupon.tenant_id, Coupon.id).in_(keys))
        )
        return {(c.tenant_id, c.id): c for c in rows}

    async def add_coupon(self, tenant_id: str, id: str, spec: dict[str, Any]) -> bool:
        """Insert a coupon; False when the id is taken (the caller compares)."""
        inserted = await self.session.scalar(
            insert(Coupon)
            .values(tenant_id=tenant_id, id=id, spec=spec, times_redeemed=0)
            .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
            .returning(Coupon.id)
        )
        return inserted is not None

    async def list_coupons(self, tenant_id: str, limit: int, after: str | None) -> list[Coupon]:
        q = select(Coupon).where(Coupon.tenant_id == tenant_id)
        if after is not None:
            q = q.where(Coupon.id > after)
        return list(await self.session.scalars(q.order_by(Coupon.id).limit(limit)))

    # promotion codes -------------------------------------------------------------------

    async def promotion_code(
        self, tenant_id: str, code: str, *, lock: bool = False
    ) -> PromotionCode | None:
        q = select(PromotionCode).where(
            PromotionCode.tenant_id == tenant_id, PromotionCode.code_key == code.lower()
        )
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def add_promotion_code(self, **columns: Any) -> bool:
        """Insert a promotion code; False when the code (in any case) is taken."""
        inserted = await self.session.scalar(
            insert(PromotionCode)
            .values(code_key=columns["code"].lower(), times_redeemed=0, **columns)
            .on_conflict_do_nothing(index_elements=["tenant_id", "code_key"])
            .returning(PromotionCode.code_key)
        )
        return inserted is not None

    async def redeem(self, coupon: Coupon, code: PromotionCode | None) -> None:
        """Count one redemption of ``coupon`` (and ``code``); both locked by the caller."""
        coupon.times_redeemed += 1
        if code is not None:
            code.times_redeemed += 1
        await self.session.flush()

    # discounts -------------------------------------------------------------------------

    async def discount(self, tenant_id: str, id: str, *, lock: bool = False) -> Discount | None:
        q = select(Discount).where(Discount.tenant_id == tenant_id, Discount.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def add_discount(self, **columns: Any) -> bool:
        """Insert a discount; False when the id is taken (the caller compares)."""
        inserted = await self.session.scalar(
            insert(Discount)
            .values(**columns)
            .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
            .returning(Discount.id)
        )
        return inserted is not None

    async def remove(self, discount: Discount, at: datetime) -> None:
        discount.removed_at = at
        await self.session.flush()

    async def of_customer(self, tenant_id: str, customer_id: str, limit: int) -> list[Discount]:
        return list(
            await self.session.scalars(
                select(Discount)
                .where(Discount.tenant_id == tenant_id, Discount.customer_id == customer_id)
                .order_by(Discount.applied_at, Discount.id)
                .limit(limit)
            )
        )

    async def live_count(self, tenant_id: str, customer_id: str) -> int:
        """How many discounts of the customer are not removed."""
        n = await self.session.scalar(
            select(func.count()).where(
                Discount.tenant_id == tenant_id,
                Discount.customer_id == customer_id,
                Discount.removed_at.is_(None),
            )
        )
        return int(n or 0)

    async def active(self, customer_ids: Iterable[str]) -> list[Discount]:
        """The discounts of these customers that are not removed, locked (in key order: no
        deadlock between two finalizers) for the rest of the transaction, in the order they
        apply (applied_at, then id)."""
        ids = set(customer_ids)
        if not ids:
            return []
        rows = list(
            await self.session.scalars(
                select(Discount)
                .where(Discount.customer_id.in_(ids), Discount.removed_at.is_(None))
                .order_by(Discount.tenant_id, Discount.id)
                .with_for_update()
            )
        )
        return sorted(rows, key=lambda d: (d.applied_at, d.id))

    async def applied(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, discount) -> (how many invoices it was applied to, the amount in all)."""
        keys = set(keys)
        if not keys:
            return {}
        rows = await self.session.execute(
            select(
                DiscountApplication.tenant_id,
                DiscountApplication.discount_id,
                func.count(),
                func.coalesce(func.sum(DiscountApplication.amount), 0),
            )
            .where(tuple_(DiscountApplication.tenant_id, DiscountApplication.discount_id).in_(keys))
            .group_by(DiscountApplication.tenant_id, DiscountApplication.discount_id)
        )
        return {(t, d): (int(n), int(s)) for t, d, n, s in rows}

    async def add_applications(self, rows: Sequence[dict[str, Any]]) -> int:
        """Record applications (one statement); those recorded before are skipped. Returns
        how many were written."""
        if not rows:
            return 0
        written = await self.session.scalars(
            insert(DiscountApplication)
            .values(list(rows))
            .on_conflict_do_nothing(constraint="uq_discount_applications_invoice")
            .returning(DiscountApplication.seq)
        )
        return len(list(written))

    async def applications(self, tenant_id: str, discount_id: str) -> list[DiscountApplication]:
        return list(
            await self.session.scalars(
                select(DiscountApplication)
                .where(
                    DiscountApplication.tenant_id == tenant_id,
                    DiscountApplication.discount_id == discount_id,
                )
                .order_by(DiscountApplication.seq)
            )
        )

"""Coupons, promotion codes and discounts: their commands, and applying discounts to the
invoices a chunk finalizes (``Discounts``), each inside the one ``Tx`` of its command or
job step. The arithmetic is in ``discounts.py`` (pure); docs/discounts.md has the rules.

Redemptions are counted under the coupon's row lock, then the promotion code's, so
``max_redemptions`` holds under any concurrency. Finalization locks the discounts it
applies (after the invoices it claimed) and records one application per discount and
invoice, unique: a replay or a retry after kill -9 applies nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.discounts import (
    ApplyDiscount,
    CouponCreated,
    CouponSpec,
    CreateCoupon,
    CreatePromotionCode,
    DiscountApplied,
    DiscountRemoved,
    PromotionCodeCreated,
    PromotionCodeData,
    RemoveDiscount,
)
from storage.invoicing import Customer, Invoice, InvoicingRepository
from storage.invoicing.discounts import Coupon, Discount, DiscountRepository, PromotionCode
from workers.invoicing import discounts, service
from workers.invoicing.base import Handler, Result, emit
from workers.invoicing.errors import Conflict, NotFound
from workers.runtime import Tx

MAX_LIVE_DISCOUNTS = 100  # per customer: every invoice of it reads them all as it finalizes
SUBSCRIPTION = "subscription"  # the only kind of invoice discounts reduce


def _spec(coupon: Coupon) -> CouponSpec:
    return CouponSpec.model_validate(coupon.spec)


async def create_coupon(cmd: CreateCoupon, tx: Tx) -> Result:
    """Defines a coupon (immutable: the same terms again are a no-op, other terms under the
    same id are refused); emits coupon.created."""
    spec, tenant = cmd.data, cmd.tenantid
    repo = tx.repo(DiscountRepository)
    if not await repo.add_coupon(tenant, spec.id, spec.model_dump(mode="json")):
        existing = await repo.coupon(tenant, spec.id)
        assert existing is not None
        if _spec(existing) != spec:
            raise Conflict(
                f"coupon {spec.id!r} exists with other terms; coupons are immutable", field="id"
            )
        return {"coupon_id": spec.id}
    data = discounts.coupon_data(spec.model_dump(mode="json"), 0)
    emit(tx, CouponCreated(data=data, source=service.SOURCE, subject=spec.id, **cmd.caused()))
    return {"coupon_id": spec.id}


async def create_promotion_code(cmd: CreatePromotionCode, tx: Tx) -> Result:
    """Defines a promotion code for an existing coupon (immutable, unique per tenant in any
    letter case); emits promotion_code.created."""
    spec, tenant = cmd.data, cmd.tenantid
    repo = tx.repo(DiscountRepository)
    if await repo.coupon(tenant, spec.coupon) is None:
        raise NotFound(f"no coupon {spec.coupon!r}", field="coupon")
    columns = {
        "tenant_id": tenant,
        "code": spec.code,
        "coupon_id": spec.coupon,
        "max_redemptions": spec.max_redemptions,
        "expires_at": spec.expires_at,
    }
    if not await repo.add_promotion_code(**columns):
        existing = await repo.promotion_code(tenant, spec.code)
        assert existing is not None
        if any(getattr(existing, c) != columns[c] for c in columns):
            raise Conflict(
                f"promotion code {spec.code!r} exists (codes are unique in any letter case) "
                "with other terms; promotion codes are immutable",
                field="code",
            )
        return {"code": existing.code, "coupon_id": existing.coupon_id}
    data = PromotionCodeData(**spec.model_dump())
    event = PromotionCodeCreated(
        data=data, source=service.SOURCE, subject=spec.code, **cmd.caused()
    )
    emit(tx, event)
    return {"code": spec.code, "coupon_id": spec.coupon}


def _result(d: Discount) -> Result:
    return {"discount_id": d.id, "coupon_id": d.coupon_id, "promotion_code": d.promotion_code}


async def _customer(tx: Tx, tenant: str, external_id: str) -> Customer:
    customer = await tx.repo(InvoicingRepository).customer(tenant, external_id)
    if customer is None:
        raise NotFound(f"no customer {external_id!r}", field="customer")
    return customer


def _check_redeemable(
    coupon: Coupon, code: PromotionCode | None, customer: Customer, now: datetime
) -> None:
    spec = _spec(coupon)
    if spec.redeem_by is not None and spec.redeem_by <= now:
        raise Conflict(
            f"coupon {coupon.id!r} could be redeemed until {spec.redeem_by.isoformat()}",
            field="redeem_by",
        )
    if spec.max_redemptions is not None and coupon.times_redeemed >= spec.max_redemptions:
        raise Conflict(
            f"coupon {coupon.id!r} was redeemed {coupon.times_redeemed} times, its maximum",
            field="max_redemptions",
        )
    if spec.amount_off is not None and spec.currency != customer.currency:
        raise Conflict(
            f"the coupon takes {spec.currency} off; the customer pays in {customer.currency}",
            field="currency",
        )
    if code is None:
        return
    if code.expires_at is not None and code.expires_at <= now:
        raise Conflict(f"promotion code {code.code!r} has expired", field="expires_at")
    if code.max_redemptions is not None and code.times_redeemed >= code.max_redemptions:
        raise Conflict(
            f"promotion code {code.code!r} was redeemed {code.times_redeemed} times, its maximum",
            field="max_redemptions",
        )


async def apply_discount(cmd: ApplyDiscount, tx: Tx) -> Result:
    """Redeems a coupon (directly or by a promotion code) for a customer or one of its
    subscriptions, counted under the coupon's lock; emits discount.applied. The same
    discount again is a no-op; another one under the same id is refused."""
    spec, tenant = cmd.data, cmd.tenantid
    repo = tx.repo(DiscountRepository)
    customer = await _customer(tx, tenant, spec.customer)
    if spec.subscription_id is not None:
        sub = await tx.repo(InvoicingRepository).subscription(tenant, spec.subscription_id)
        if sub is None or sub.customer_id != customer.id:
            raise NotFound(
                f"no subscription {spec.subscription_id!r} of customer {spec.customer!r}",
                field="subscription_id",
            )
        if sub.status != "active":
            raise Conflict(f"subscription {sub.id!r} has ended", field="subscription_id")
    code: PromotionCode | None = None
    coupon_id = spec.coupon
    if spec.promotion_code is not None:
        code = await repo.promotion_code(tenant, spec.promotion_code)
        if code is None:
            raise NotFound(f"no promotion code {spec.promotion_code!r}", field="promotion_code")
        coupon_id = code.coupon_id
    assert coupon_id is not None

    def same(d: Discount) -> bool:
        return (d.customer_id, d.subscription_id, d.coupon_id) == (
            customer.id, spec.subscription_id, coupon_id,
        )  # fmt: skip

    existing = await repo.discount(tenant, spec.id)
    if existing is not None:
        if not same(existing):
            raise Conflict(f"discount {spec.id!r} exists with other terms", field="id")
        return _result(existing)
    coupon = await repo.coupon(tenant, coupon_id, lock=True)
    if coupon is None:
        raise NotFound(f"no coupon {coupon_id!r}", field="coupon")
    if code is not None:
        code = await repo.promotion_code(tenant, code.code, lock=True)
    _check_redeemable(coupon, code, customer, cmd.time)
    if await repo.live_count(tenant, customer.id) >= MAX_LIVE_DISCOUNTS:
        raise Conflict(
            f"the customer has {MAX_LIVE_DISCOUNTS} discounts; remove some first",
            field="customer",
        )
    columns = {
        "tenant_id": tenant,
        "id": spec.id,
        "customer_id": customer.id,
        "subscription_id": spec.subscription_id,
        "coupon_id": coupon.id,
        "promotion_code": code.code if code is not None else None,
        "applied_at": cmd.time,
        "removed_at": None,
    }
    if not await repo.add_discount(**columns):  # taken meanwhile (another partition)
        raise Conflict(f"discount {spec.id!r} exists", field="id")
    await repo.redeem(coupon, code)
    discount = await repo.discount(tenant, spec.id)
    assert discount is not None
    data = discounts.discount_data(
        discount,
        discounts.coupon_data(coupon.spec, coupon.times_redeemed),
        customer.external_id,
        (0, 0),
    )
    event = DiscountApplied(data=data, source=service.SOURCE, subject=spec.id, **cmd.caused())
    emit(tx, event, spec.customer)
    return _result(discount)


async def remove_discount(cmd: RemoveDiscount, tx: Tx) -> Result:
    """Ends a discount: invoices finalized from now on are not reduced by it (those
    finalized before keep their discount lines); emits discount.removed. Removing it again
    is a no-op."""
    tenant, id = cmd.tenantid, cmd.data.discount_id
    repo = tx.repo(DiscountRepository)
    discount = await repo.discount(tenant, id, lock=True)
    if discount is None:
        raise NotFound(f"no discount {id!r}", field="discount_id")
    if discount.removed_at is not None:
        return _result(discount) | {"removed_at": discount.removed_at.isoformat()}
    await repo.remove(discount, cmd.time)
    customer = (await tx.repo(InvoicingRepository).customers({discount.customer_id}))[
        discount.customer_id
    ]
    coupon = await repo.coupon(tenant, discount.coupon_id)
    assert coupon is not None
    applied = (await repo.applied([(tenant, id)])).get((tenant, id), (0, 0))
    data = discounts.discount_data(
        discount,
        discounts.coupon_data(coupon.spec, coupon.times_redeemed),
        customer.external_id,
        applied,
    )
    emit(
        tx,
        DiscountRemoved(data=data, source=service.SOURCE, subject=id, **cmd.caused()),
        customer.external_id,
    )
    return _result(discount) | {"removed_at": cmd.time.isoformat()}


COMMANDS: dict[type[Any], Handler] = {
    CreateCoupon: create_coupon,
    CreatePromotionCode: create_promotion_code,
    ApplyDiscount: apply_discount,
    RemoveDiscount: remove_discount,
}


# --- applying discounts as invoices finalize -----------------------------------------


@dataclass
class Discounts:
    """The discounts of a chunk of drafts being finalized: opened once per chunk (locks
    them), ``lines`` per invoice, ``write`` once after the chunk (one statement)."""

    as_of: datetime
    active: dict[str, list[discounts.Active]] = field(default_factory=dict)  # by customer id
    plan_keys: dict[str, str] = field(default_factory=dict)  # plan id -> key
    rows: list[dict[str, Any]] = field(default_factory=list)  # applications to write

    @classmethod
    async def open(cls, tx: Tx, drafts: Sequence[Invoice], as_of: datetime) -> Discounts:
        mine = [d for d in drafts if d.kind == SUBSCRIPTION]
        out = cls(as_of)
        repo = tx.repo(DiscountRepository)
        found = await repo.active({d.customer_id for d in mine})
        if not found:
            return out
        coupons = await repo.coupons_by_id({(x.tenant_id, x.coupon_id) for x in found})
        used = await repo.applied({(x.tenant_id, x.id) for x in found})
        for x in found:  # in the order they apply
            terms = discounts.Terms.of(_spec(coupons[(x.tenant_id, x.coupon_id)]))
            n = used.get((x.tenant_id, x.id), (0, 0))[0]
            active = discounts.Active(x.id, x.subscription_id, x.applied_at, terms, n)
            out.active.setdefault(x.customer_id, []).append(active)
        plans = await tx.repo(InvoicingRepository).plans({d.plan_id for d in mine if d.plan_id})
        out.plan_keys = {id: p.key for id, p in plans.items()}
        return out

    def lines(self, invoice: dict[str, Any], lines: Sequence[service.Line]) -> list[service.Line]:
        """The discount lines of ``invoice`` (its charge ``lines``: positions as given);
        counts a period of each discount that counts on it."""
        if invoice.get("kind", SUBSCRIPTION) != SUBSCRIPTION or invoice["proration"] == 0:
            return []  # a trial's invoice (no share of the flat fees) uses no period either
        counting = [
            a
            for a in self.active.get(invoice["customer_id"], [])
            if a.counts_on(invoice["subscription_id"], invoice["period_end"], invoice["currency"])
        ]
        if not counting:
            return []
        plan_key = self.plan_keys.get(invoice["plan_id"]) if invoice["plan_id"] else None
        out, taken = discounts.reduce(lines, counting, plan_key, invoice["rounding"])
        for a in counting:
            a.used += 1
            self.rows.append(discounts.application(invoice, a.id, taken[a.id], self.as_of))
        return out

    async def write(self, tx: Tx) -> int:
        """Record the chunk's applications (one statement); returns how many were new."""
        return await tx.repo(DiscountRepository).add_applications(self.rows)

"""Discounts, pure: which discounts reduce an invoice, which of its lines, by how much, and
the discount lines that say so (docs/discounts.md). No I/O: ``discounting.py`` brings the
data and writes the applications.

The rule, in full:

* Only subscription invoices are discounted, at finalization (drafts show none). A
  discount counts when it was applied before the invoice's period ended
  (``applied_at < period_end``), is not removed, and its duration is not used up: ``once``
  is one invoice, ``repeating`` ``duration_in_periods`` invoices, ``forever`` every one. A
  discount of a subscription reduces that subscription's invoices; one of a customer (no
  subscription) every subscription invoice of the customer. Each invoice a discount counts
  on uses one of its periods, even if nothing on it was eligible.
* Eligible lines: the invoice's own charge lines with an amount above 0 — not late-usage
  adjustments, credit or discount lines — of a plan or price the coupon names (every charge
  line without ``applies_to``).
* Percent off: each eligible line gets one discount line of ``amount * percent / 100``
  minor units, computed exactly and rounded once with the tenant's rounding (half-even by
  default), at most what is left of the line. Amount off: the coupon's amount is spread over
  the eligible lines in their order, each taking ``min(what is left of the coupon, what is
  left of the line)`` — no rounding. An amount in another currency than the invoice's is
  not applied (nor counted).
* Several discounts on one invoice apply in order of ``applied_at``, then id, each on what
  the previous ones left of each line: no line ever goes below zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from schemas.currency import exponent
from schemas.decimals import dump_decimal
from schemas.discounts import CouponData, CouponSpec, DiscountData
from workers.invoicing import service

_EXACT_PRECISION = 60  # digits: amount (<= 19) times a percent (<= 3 + 12 places) is exact


@dataclass(frozen=True)
class Terms:
    """A coupon's terms, as discounts apply them."""

    name: str
    percent_off: Decimal | None
    amount_off: int | None
    currency: str | None
    periods: int | None  # how many invoices it counts on; None: forever
    plans: frozenset[str] | None  # None: no scope (every line)
    prices: frozenset[str] | None

    @classmethod
    def of(cls, spec: CouponSpec) -> Terms:
        periods = {"once": 1, "repeating": spec.duration_in_periods, "forever": None}
        scope = spec.applies_to
        return cls(
            name=spec.name,
            percent_off=spec.percent_off,
            amount_off=spec.amount_off,
            currency=spec.currency,
            periods=periods[spec.duration],
            plans=frozenset(scope.plans) if scope else None,
            prices=frozenset(scope.prices) if scope else None,
        )

    def label(self) -> str:
        """What a discount line says: ``Welcome (20 % off)``, ``Loyalty (5.00 USD off)``."""
        if self.percent_off is not None:
            return f"{self.name} ({dump_decimal(self.percent_off.normalize())} % off)"
        assert self.amount_off is not None and self.currency is not None
        major = Decimal(self.amount_off).scaleb(-exponent(self.currency))
        return f"{self.name} ({dump_decimal(major)} {self.currency} off)"


@dataclass
class Active:
    """A discount that may reduce invoices, and how many invoices it has counted on."""

    id: str
    subscription_id: str | None  # None: every subscription of the customer
    applied_at: datetime
    terms: Terms
    used: int = 0

    def counts_on(self, subscription_id: str | None, period_end: datetime, currency: str) -> bool:
        t = self.terms
        return (
            (self.subscription_id is None or self.subscription_id == subscription_id)
            and self.applied_at < period_end
            and (t.periods is None or self.used < t.periods)
            and (t.amount_off is None or t.currency == currency)
        )


def eligible(terms: Terms, plan_key: str | None, line: service.Line) -> bool:
    """Whether ``line`` is one a coupon of ``terms`` reduces."""
    charge = (
        line.kind != service.DISCOUNT
        and line.grant_id is None
        and line.adjustment_for is None
        and line.amount > 0
    )
    if not charge:
        return False
    if terms.plans is None and terms.prices is None:
        return True
    return (plan_key is not None and plan_key in (terms.plans or ())) or (
        line.price_key in (terms.prices or ())
    )


def percent_of(amount: int, percent: Decimal, rounding: str) -> int:
    """``amount * percent / 100`` minor units, exact, rounded once with ``rounding`` (the
    tenant's rounding name)."""
    with localcontext() as ctx:
        ctx.prec = _EXACT_PRECISION
        exact = Decimal(amount) * percent / Decimal(100)
        return int(exact.quantize(Decimal(1), rounding=service.ROUNDING[rounding]))


def discount_line(
    terms: Terms, discount_id: str, line: service.Line, position: int, amount: int
) -> service.Line:
    return service.Line(
        price_key=line.price_key,
        kind=service.DISCOUNT,
        description=terms.label(),
        meter=None,
        subject=None,
        period_start=line.period_start,
        period_end=line.period_end,
        quantity=Decimal(1),
        unit_price=None,
        tiers=(),
        proration=Decimal(1),
        minimum_applied=False,
        amount=-amount,
        tax_rate=line.tax_rate,
        applies_to=position,
        discount_id=discount_id,
    )


def reduce(
    lines: Sequence[service.Line],
    discounts: Sequence[Active],
    plan_key: str | None,
    rounding: str,
) -> tuple[list[service.Line], dict[str, int]]:
    """The discount lines of an invoice of ``lines`` (its charge lines, positions as given)
    for ``discounts`` (those that count on it, in the order they apply), and what each
    discount took off in all (0 when nothing was eligible)."""
    left = [ln.amount for ln in lines]
    out: list[service.Line] = []
    taken: dict[str, int] = {}
    for d in discounts:
        t = d.terms
        budget = t.amount_off
        total = 0
        for i, ln in enumerate(lines):
            if not eligible(t, plan_key, ln) or left[i] <= 0:
                continue
            if t.percent_off is not None:
                take = percent_of(left[i], t.percent_off, rounding)
            else:
                assert budget is not None
                take = budget
            take = max(0, min(take, left[i]))
            if budget is not None:
                budget -= take
            if take:
                left[i] -= take
                total += take
                out.append(discount_line(t, d.id, ln, i, take))
            if budget == 0:
                break
        taken[d.id] = total
    return out, taken


def application(
    invoice: dict[str, Any], discount_id: str, amount: int, at: datetime
) -> dict[str, Any]:
    """A discount_applications row: ``discount_id`` took ``amount`` off ``invoice``."""
    return {
        "tenant_id": invoice["tenant_id"],
        "discount_id": discount_id,
        "invoice_id": invoice["id"],
        "amount": amount,
        "applied_at": at,
    }


def coupon_data(spec: dict[str, Any], times_redeemed: int) -> CouponData:
    """A stored coupon (its spec as created) as events and the API show it."""
    return CouponData.model_validate(spec | {"times_redeemed": times_redeemed})


def discount_data(
    discount: Any, coupon: CouponData, customer: str, applied: tuple[int, int]
) -> DiscountData:
    """A stored discount as events and the API show it; ``applied``: (invoices, amount)."""
    return DiscountData(
        discount_id=discount.id,
        customer=customer,
        subscription_id=discount.subscription_id,
        coupon=coupon,
        promotion_code=discount.promotion_code,
        applied_at=discount.applied_at,
        removed_at=discount.removed_at,
        periods_applied=applied[0],
        amount_applied=applied[1],
    )


def net_charges(lines: Sequence[service.Line]) -> list[tuple[service.Line, int]]:
    """Each line that is not a discount line, with its amount after its discount lines
    (those whose ``applies_to`` is its position): what credits may pay of it."""
    net = [ln.amount for ln in lines]
    for ln in lines:
        if ln.kind == service.DISCOUNT and ln.applies_to is not None:
            net[ln.applies_to] += ln.amount
    return [(ln, net[i]) for i, ln in enumerate(lines) if ln.kind != service.DISCOUNT]

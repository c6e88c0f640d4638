"""Amounts of an invoice, pure: its lines (``Line``), how each is rounded (``ROUNDING``) and
its totals from its lines: charge lines, discount lines, credit lines and lines with their
own tax rate. ``service`` re-exports all of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    ROUND_CEILING,
    ROUND_DOWN,
    ROUND_FLOOR,
    ROUND_HALF_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Decimal,
)

from schemas.currency import exponent
from schemas.invoicing import InvoiceLine, TierLine
from workers.invoicing import pricing
from workers.invoicing.errors import AmountOutOfRange

ROUNDING = {
    "half_even": ROUND_HALF_EVEN,
    "half_up": ROUND_HALF_UP,
    "half_down": ROUND_HALF_DOWN,
    "up": ROUND_UP,
    "down": ROUND_DOWN,
    "ceiling": ROUND_CEILING,
    "floor": ROUND_FLOOR,
}


@dataclass(frozen=True)
class Line:
    price_key: str
    kind: str
    description: str
    meter: str | None
    subject: str | None
    period_start: datetime
    period_end: datetime
    quantity: Decimal
    unit_price: Decimal | None
    tiers: tuple[pricing.TierPart, ...]
    proration: Decimal
    minimum_applied: bool
    amount: int
    adjustment_for: str | None = None
    grant_id: str | None = None  # a credit line: the grant that paid
    tax_rate: Decimal | None = None  # the line's own rate (one-off lines); None: the invoice's
    applies_to: int | None = None  # a discount line: the position of the line it reduces
    discount_id: str | None = None  # a discount line: the discount applied

    def model(self) -> InvoiceLine:
        return InvoiceLine(
            price_key=self.price_key,
            kind=self.kind,
            description=self.description,
            meter=self.meter,
            subject=self.subject,
            period_start=self.period_start,
            period_end=self.period_end,
            quantity=self.quantity,
            unit_price=self.unit_price,
            tiers=[
                TierLine(
                    tier=p.tier,
                    quantity=p.quantity,
                    unit_price=p.unit_price,
                    flat_fee=p.flat_fee,
                    amount=p.amount,
                )
                for p in self.tiers
            ],
            proration=self.proration,
            minimum_applied=self.minimum_applied,
            amount=self.amount,
            adjustment_for=self.adjustment_for,
            grant_id=self.grant_id,
            tax_rate=self.tax_rate,
            applies_to=self.applies_to,
            discount_id=self.discount_id,
        )


@dataclass(frozen=True)
class Totals:
    subtotal: int  # the charge lines, before discounts and credits
    tax: int
    total: int  # subtotal - discount - credits + tax
    credits: int = 0
    discount: int = 0


MAX_AMOUNT = 2**63 - 1  # minor units: what a BIGINT column holds
AFTER_TAX, BEFORE_TAX = "after_tax", "before_tax"
CREDIT, DISCOUNT = "credit", "discount"  # the kinds of the lines that are not charges


def taxed(subtotal: int, tax_rate: Decimal | None, currency: str, rounding: str) -> int:
    """The tax of ``subtotal`` (minor units), rounded once."""
    if tax_rate is None:
        return 0
    return pricing.tax_minor(subtotal, tax_rate, currency, ROUNDING[rounding])


def tax_bases(lines: Sequence[Line], tax_rate: Decimal | None) -> dict[Decimal | None, int]:
    """What each tax rate is charged on: the charge and discount lines, by their own rate
    (``Line.tax_rate``), else the invoice's ``tax_rate``; in order of first appearance."""
    bases: dict[Decimal | None, int] = {}
    for ln in lines:
        if ln.grant_id is None:
            rate = ln.tax_rate if ln.tax_rate is not None else tax_rate
            bases[rate] = bases.get(rate, 0) + ln.amount
    return bases


def totals(
    lines: Sequence[Line],
    tax_rate: Decimal | None,
    currency: str,
    rounding: str,
    credits_apply: str = AFTER_TAX,
) -> Totals:
    """The invoice's totals. ``subtotal`` is the charge lines; discount lines (kind
    ``discount``) and credit lines (``grant_id`` set) are negative. Tax is computed once per
    rate (a line's own, else ``tax_rate``) on what the lines at that rate come to after their
    discounts. After tax, credits pay the total; before tax, they reduce the taxed amounts
    first (rate by rate, in order of the lines). ``AmountOutOfRange`` if a line or total
    cannot be stored."""
    exponent(currency)  # a known currency, or ValueError
    subtotal = sum(ln.amount for ln in lines if ln.grant_id is None and ln.kind != DISCOUNT)
    discount = -sum(ln.amount for ln in lines if ln.grant_id is None and ln.kind == DISCOUNT)
    credits = -sum(ln.amount for ln in lines if ln.grant_id is not None)
    bases = tax_bases(lines, tax_rate)
    if credits_apply == BEFORE_TAX:
        left = credits
        for rate, base in bases.items():
            take = min(max(base, 0), left)
            bases[rate], left = base - take, left - take
    tax = sum(taxed(base, rate, currency, rounding) for rate, base in bases.items())
    total = subtotal - discount - credits + tax
    named = [(f"line {ln.price_key}", ln.amount) for ln in lines]
    named += [("subtotal", subtotal), ("tax", tax), ("total", total)]
    for what, amount in named:
        if abs(amount) > MAX_AMOUNT:
            raise AmountOutOfRange(
                f"{what} is {amount} minor units of {currency}; at most {MAX_AMOUNT} can be stored"
            )
    return Totals(subtotal, tax, total, credits, discount)

"""Amounts of an invoice, pure: its lines (``Line``), how each is rounded (``ROUNDING``) and
its totals from its lines: charge lines, discount lines, credit lines and lines with their
own tax rate. ``service`` re-exports all of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
from typing import Any

from schemas.currency import exponent
from schemas.invoicing import InvoiceLine, TierLine
from workers.invoicing import pricing, taxes
from workers.invoicing.errors import AmountOutOfRange
from workers.invoicing.taxes import Taxation

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
    tax_names: tuple[str, ...] | None = None  # the rates its price, plan or caller names
    rates: tuple[taxes.Rate, ...] | None = None  # resolved; None: the invoice's (Taxation)
    tax_amounts: tuple[taxes.TaxAmount, ...] = ()  # computed as the invoice is totalled

    def model(self) -> InvoiceLine:
        """The contract of this line. Built without validation when every value already has
        the type validation would give it (a computed line: plain ints, finite decimals,
        aware datetimes); otherwise validated as any input is. The same JSON either way
        (tests/unit/test_invoicing_contracts.py)."""
        values: dict[str, Any] = {
            "price_key": self.price_key,
            "kind": self.kind,
            "description": self.description,
            "meter": self.meter,
            "subject": self.subject,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "quantity": self.quantity,
            "unit_price": self.unit_price,
            "proration": self.proration,
            "minimum_applied": self.minimum_applied,
            "amount": self.amount,
            "adjustment_for": self.adjustment_for,
            "grant_id": self.grant_id,
            "tax_rate": self.tax_rate,
            "applies_to": self.applies_to,
            "discount_id": self.discount_id,
            "taxes": [t.model() for t in self.tax_amounts],
        }
        tiers: list[dict[str, Any]] = [
            {"tier": p.tier, "quantity": p.quantity, "unit_price": p.unit_price,
             "flat_fee": p.flat_fee, "amount": p.amount}
            for p in self.tiers
        ]  # fmt: skip
        if _plain(self):
            return InvoiceLine.model_construct(
                **values, tiers=[TierLine.model_construct(**t) for t in tiers]
            )
        return InvoiceLine(**values, tiers=[TierLine(**t) for t in tiers])


def _decimal(v: object) -> bool:
    return type(v) is Decimal and v.is_finite()


def _text(v: object) -> bool:
    return v is None or type(v) is str


def _aware(v: object) -> bool:
    return type(v) is datetime and v.tzinfo is not None


def _plain(ln: Line) -> bool:
    """Whether every value of ``ln`` is already what validating ``InvoiceLine`` would make
    of it (so the model can be built without validation and dumps the same)."""
    return (
        type(ln.price_key) is str
        and type(ln.kind) is str
        and type(ln.description) is str
        and _text(ln.meter)
        and _text(ln.subject)
        and _aware(ln.period_start)
        and _aware(ln.period_end)
        and _decimal(ln.quantity)
        and (ln.unit_price is None or _decimal(ln.unit_price))
        and _decimal(ln.proration)
        and type(ln.minimum_applied) is bool
        and type(ln.amount) is int
        and _text(ln.adjustment_for)
        and _text(ln.grant_id)
        and (ln.tax_rate is None or _decimal(ln.tax_rate))
        and (ln.applies_to is None or type(ln.applies_to) is int)
        and _text(ln.discount_id)
        and all(
            type(p.tier) is int
            and _decimal(p.quantity)
            and _decimal(p.unit_price)
            and _decimal(p.flat_fee)
            and _decimal(p.amount)
            for p in ln.tiers
        )
    )


@dataclass(frozen=True)
class Totals:
    subtotal: int  # the charge lines, before discounts and credits
    tax: int
    total: int  # subtotal - discount - credits + tax
    credits: int = 0
    discount: int = 0
    tax_inclusive: int = 0  # the part of ``tax`` already in the lines' amounts
    computed: taxes.Computed = field(default=taxes.NONE, compare=False)


MAX_AMOUNT = 2**63 - 1  # minor units: what a BIGINT column holds
AFTER_TAX, BEFORE_TAX = "after_tax", "before_tax"
CREDIT, DISCOUNT = "credit", "discount"  # the kinds of the lines that are not charges


def taxed(subtotal: int, tax_rate: Decimal | None, currency: str, rounding: str) -> int:
    """The tax of ``subtotal`` (minor units) at a bare rate fraction, rounded once."""
    if tax_rate is None:
        return 0
    return pricing.tax_minor(subtotal, tax_rate, currency, ROUNDING[rounding])


def taxation(tax: Decimal | Taxation | None) -> Taxation:
    """``tax`` as a ``Taxation``: a bare rate fraction (or None) is an exclusive rate."""
    return tax if isinstance(tax, Taxation) else Taxation.of(tax)


def totals(
    lines: Sequence[Line],
    tax: Decimal | Taxation | None,
    currency: str,
    rounding: str,
    credits_apply: str = AFTER_TAX,
) -> Totals:
    """The invoice's totals. ``subtotal`` is the charge lines; discount lines (kind
    ``discount``) and credit lines (``grant_id`` set) are negative. ``tax``: how the lines
    are taxed (``taxes.compute``): a ``Taxation``, or a bare rate fraction for every line
    without rates of its own. After tax, credits pay the total; before tax, they reduce the
    taxed amounts first. ``total = subtotal - discount - credits + tax - tax_inclusive``.
    ``AmountOutOfRange`` if a line or total cannot be stored."""
    exponent(currency)  # a known currency, or ValueError
    subtotal = sum(ln.amount for ln in lines if ln.grant_id is None and ln.kind != DISCOUNT)
    discount = -sum(ln.amount for ln in lines if ln.grant_id is None and ln.kind == DISCOUNT)
    credits = -sum(ln.amount for ln in lines if ln.grant_id is not None)
    before = credits if credits_apply == BEFORE_TAX else 0
    computed = taxes.compute(lines, taxation(tax), ROUNDING[rounding], before)
    total = subtotal - discount - credits + computed.tax - computed.inclusive
    named = [(f"line {ln.price_key}", ln.amount) for ln in lines]
    named += [("subtotal", subtotal), ("tax", computed.tax), ("total", total)]
    for what, amount in named:
        if abs(amount) > MAX_AMOUNT:
            raise AmountOutOfRange(
                f"{what} is {amount} minor units of {currency}; at most {MAX_AMOUNT} can be stored"
            )
    return Totals(subtotal, computed.tax, total, credits, discount, computed.inclusive, computed)


def with_taxes(lines: Sequence[Line], t: Totals) -> list[Line]:
    """``lines`` with the taxes ``totals`` computed for each."""
    if not t.computed.lines:
        return list(lines)
    evolve = taxes.evolve
    return [evolve(ln, tax_amounts=a) for ln, a in zip(lines, t.computed.lines, strict=True)]

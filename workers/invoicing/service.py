"""Invoicing domain logic, pure: billing periods, subscriptions moving from period to period,
invoice lines, late-usage adjustments, totals, invoice state changes, and every event
invoicing emits. No I/O; the commands, the payment handlers and the billing jobs bring the
data (ARCHITECTURE.md §1)."""

from __future__ import annotations

import calendar
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from typing import Any, Literal

from schemas.currency import exponent
from schemas.envelope import CloudEvent
from schemas.invoicing import (
    CreatePlan,
    CustomerCreated,
    CustomerData,
    CustomerSpec,
    CustomerUpdated,
    InvoiceCreated,
    InvoiceData,
    InvoiceFinalized,
    InvoiceLine,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoicePaymentRecorded,
    InvoiceRefunded,
    InvoiceVoided,
    InvoicingConfig,
    PlanCreated,
    PlanData,
    SubscriptionCreated,
    SubscriptionData,
    SubscriptionEnded,
    SubscriptionUpdated,
    TierLine,
    UpsertCustomer,
)
from schemas.pricing import FlatPrice, MeteredPrice, PlanSpec, Price
from workers.invoicing import pricing
from workers.invoicing.errors import AmountOutOfRange, InvalidTransition

ROUNDING = {
    "half_even": ROUND_HALF_EVEN,
    "half_up": ROUND_HALF_UP,
    "half_down": ROUND_HALF_DOWN,
    "up": ROUND_UP,
    "down": ROUND_DOWN,
    "ceiling": ROUND_CEILING,
    "floor": ROUND_FLOOR,
}
HOUR = timedelta(hours=1)
SOURCE = "billstream/invoicing"
DEFAULT_CONFIG = InvoicingConfig()  # a tenant's settings until it configures invoicing


# --- periods -----------------------------------------------------------------------


def add_interval(anchor: datetime, interval: str, n: int) -> datetime:
    """``anchor`` plus ``n`` months or years, the day clamped to the month's last day
    (anchored on Jan 31: Feb 28/29, Mar 31, Apr 30, ...), always counted from the anchor so
    a short month never shifts later periods."""
    months = n * (12 if interval == "year" else 1)
    years, month0 = divmod(anchor.month - 1 + months, 12)
    year, month = anchor.year + years, month0 + 1
    return anchor.replace(
        year=year, month=month, day=min(anchor.day, calendar.monthrange(year, month)[1])
    )


def period(anchor: datetime, interval: str, index: int) -> tuple[datetime, datetime]:
    return add_interval(anchor, interval, index), add_interval(anchor, interval, index + 1)


def ceil_hour(t: datetime) -> datetime:
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + HOUR


def proration(start: datetime, end: datetime, cut: datetime) -> Decimal:
    """The share of [start, end) before ``cut``, to the second (for an immediate cancel)."""
    whole = Decimal(int((end - start).total_seconds()))
    used = Decimal(int((min(max(cut, start), end) - start).total_seconds()))
    return used / whole if whole else Decimal(0)


# --- subscriptions -------------------------------------------------------------------


@dataclass
class SubscriptionState:
    """A subscription as a billing run moves it from period to period."""

    tenant_id: str
    id: str
    customer_id: str
    plan_id: str
    next_plan_id: str | None
    status: str
    start: datetime
    anchor: datetime
    period_index: int
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    ended_at: datetime | None


def advance(
    sub: SubscriptionState, interval: Callable[[str], str]
) -> Literal["ended", "updated"] | None:
    """Move ``sub`` past its current period: end it (``"ended"``), switch to its next plan
    (``"updated"``: a new anchor) or renew (None). ``interval``: a plan id's interval."""
    if sub.cancel_at_period_end:
        sub.status, sub.ended_at = "ended", sub.current_period_end
        return "ended"
    if sub.next_plan_id:
        sub.plan_id, sub.next_plan_id = sub.next_plan_id, None
        sub.anchor, sub.period_index = sub.current_period_end, 0
    else:
        sub.period_index += 1
    sub.current_period_start, sub.current_period_end = period(
        sub.anchor, interval(sub.plan_id), sub.period_index
    )
    return "updated" if sub.period_index == 0 else None


# --- invoice lines ------------------------------------------------------------------


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


def unit_price(price: Price) -> Decimal | None:
    if isinstance(price, FlatPrice):
        return price.amount
    if price.kind == "per_unit":
        return price.unit_price
    if price.kind == "package":
        return price.package_price
    return None  # tiered: see the tier breakdown


def usage_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The hour-aligned window of metered usage billed for [start, end)."""
    return start, ceil_hour(end)


@dataclass(frozen=True)
class InvoiceContext:
    """What an invoice is computed from, besides usage."""

    plan: PlanSpec
    subject: str  # the customer's external id: the subject of its usage events
    currency: str
    period_start: datetime
    period_end: datetime
    proration: Decimal
    rounding: str


def period_label(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%dT%H:%MZ}/{end:%Y-%m-%dT%H:%MZ}"


def metered_prices(plan: PlanSpec) -> list[MeteredPrice]:
    return [p for p in plan.prices if not isinstance(p, FlatPrice)]


def _priced_line(
    ctx: InvoiceContext,
    price: Price,
    quantity: Decimal,
    start: datetime,
    end: datetime,
) -> tuple[pricing.Priced, Line]:
    meter = None if isinstance(price, FlatPrice) else price.meter
    metered = meter is not None
    # a negative metered value (a sum meter with refunds) bills as 0 but is shown as it is
    # (the value /usage gives); proration scales flat fees and minimum spends, never usage
    priced = pricing.price_usage(price, max(quantity, Decimal(0)), proration=ctx.proration)
    line = Line(
        price_key=price.key,
        kind=price.kind,
        description=price.name,
        meter=meter,
        subject=ctx.subject if metered else None,
        period_start=start,
        period_end=end,
        quantity=quantity if metered else priced.quantity,
        unit_price=unit_price(price),
        tiers=priced.parts,
        proration=ctx.proration,
        minimum_applied=priced.minimum_applied,
        amount=pricing.to_minor(priced.amount, ctx.currency, ROUNDING[ctx.rounding]),
    )
    return priced, line


def invoice_lines(ctx: InvoiceContext, usage: Mapping[str, Decimal | None]) -> list[Line]:
    """One line per price of the plan: flat fees prorated, metered prices from ``usage``
    (meter key -> the period's value), each line rounded once to minor units."""
    start, end = usage_window(ctx.period_start, ctx.period_end)
    lines: list[Line] = []
    for price in ctx.plan.prices:
        if isinstance(price, FlatPrice):
            lines.append(_priced_line(ctx, price, Decimal(1), ctx.period_start, ctx.period_end)[1])
        else:
            quantity = usage.get(price.meter) or Decimal(0)
            lines.append(_priced_line(ctx, price, quantity, start, end)[1])
    return lines


@dataclass
class Billed:
    """What issued invoices billed so far for one metered price of one earlier period."""

    ctx: InvoiceContext  # the invoice it first appeared on (its plan, currency, rounding)
    price: MeteredPrice
    start: datetime
    end: datetime
    quantity: Decimal = Decimal(0)
    amount: int = 0


def adjustments(
    billed: Sequence[Billed], current: Sequence[Decimal | None], currency: str
) -> list[Line]:
    """Late usage: for each earlier period whose metered value changed since it was billed,
    a line for the difference (labelled with that period), even when the amount does not
    change (usage within the included quantity, a value that stays negative). ``quantity``
    is the change of the metered value; the amount is what the period costs now minus what
    was billed for it, so the period's lines always sum to its price (ADR 0008)."""
    lines: list[Line] = []
    for b, now in zip(billed, current, strict=True):
        if b.ctx.currency != currency:
            continue  # billed under another currency: never mixed into this invoice
        value = now or Decimal(0)
        priced, full = _priced_line(b.ctx, b.price, value, b.start, b.end)
        amount = full.amount - b.amount
        if amount == 0 and value == b.quantity:
            continue
        label = period_label(b.ctx.period_start, b.ctx.period_end)
        lines.append(
            Line(
                price_key=b.price.key,
                kind=b.price.kind,
                description=f"{b.price.name} — late usage for {label}",
                meter=b.price.meter,
                subject=b.ctx.subject,
                period_start=b.start,
                period_end=b.end,
                quantity=value - b.quantity,
                unit_price=unit_price(b.price),
                tiers=(),
                proration=b.ctx.proration,
                minimum_applied=priced.minimum_applied,
                amount=amount,
                adjustment_for=label,
            )
        )
    return lines


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


def effective_tax_rate(customer: CustomerSpec) -> Decimal | None:
    return None if customer.tax_exempt else customer.tax_rate


# --- invoice state -------------------------------------------------------------------

ISSUED = ("finalized", "paid", "uncollectible")


def invoice_number(prefix: str, year: int, n: int) -> str:
    return f"{prefix}-{year}-{n:06d}"


def check_transition(status: str, to: str, *, paid_by_credits: bool = False) -> None:
    """Drafts finalize; finalized invoices are paid, voided or marked uncollectible;
    uncollectible ones can still be paid or voided. Paid and void are final, except that an
    invoice that credits paid in full (no payment) can be voided: its credits return."""
    allowed = {
        "draft": {"finalized", "void"},
        "finalized": {"paid", "void", "uncollectible"},
        "uncollectible": {"paid", "void"},
        "paid": {"void"} if paid_by_credits else set(),
    }
    if to not in allowed.get(status, set()):
        raise InvalidTransition(f"a {status} invoice cannot become {to}")


def becomes_paid(status: str, total: int, amount_paid: int) -> bool:
    """An issued, unpaid invoice whose total the payments now cover is paid."""
    return status in ("finalized", "uncollectible") and amount_paid >= total


def invoice_data(
    row: Mapping[str, Any],
    customer: str,
    lines: Sequence[InvoiceLine],
    *,
    status: str | None = None,
) -> InvoiceData:
    """The event/API view of an invoice's values (``status`` overrides the row's)."""
    return InvoiceData(
        invoice_id=row["id"],
        number=row["number"],
        status=status or row["status"],
        customer=customer,
        subscription_id=row["subscription_id"],
        kind=row.get("kind") or "subscription",
        currency=row["currency"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        subtotal=row["subtotal"],
        discount=row.get("discount") or 0,
        tax=row["tax"],
        total=row["total"],
        credits=row.get("credits") or 0,
        amount_paid=row["amount_paid"],
        amount_credited=row.get("amount_credited") or 0,
        amount_due=amount_due(row),
        amount_refunded=row.get("amount_refunded") or 0,
        tax_rate=row["tax_rate"],
        due_at=row.get("due_at"),
        lines=list(lines),
    )


def amount_due(row: Mapping[str, Any]) -> int:
    """What is still to pay: the total less payments and credit notes that reduced it."""
    due: int = row["total"] - row["amount_paid"] - (row.get("amount_credited") or 0)
    return max(due, 0)


def finalized(
    draft: Mapping[str, Any],
    t: Totals,
    tax_rate: Decimal | None,
    number: str,
    as_of: datetime,
    net_terms_days: int,
) -> dict[str, Any]:
    """The values a draft changes as it is finalized ``as_of``: numbered, its totals, due
    after the customer's net terms; paid at once if its payments already cover it."""
    paid = t.total <= draft["amount_paid"]
    return {
        "id": draft["id"],
        "status": "paid" if paid else "finalized",
        "number": number,
        "subtotal": t.subtotal,
        "tax": t.tax,
        "total": t.total,
        "credits": t.credits,
        "discount": t.discount,
        "tax_rate": tax_rate,
        "finalized_at": as_of,
        "due_at": as_of + timedelta(days=net_terms_days),
        "paid_at": as_of if paid else None,
    }


# --- events ----------------------------------------------------------------------------
# ``envelope``: the tenant and, for what a message caused, its correlation and causation
# (``message.caused()``).

SubscriptionEvent = type[SubscriptionCreated] | type[SubscriptionUpdated] | type[SubscriptionEnded]
InvoiceEvent = (
    type[InvoiceCreated]
    | type[InvoiceFinalized]
    | type[InvoicePaid]
    | type[InvoicePaymentRecorded]
    | type[InvoiceRefunded]
    | type[InvoiceVoided]
    | type[InvoiceMarkedUncollectible]
)


def customer_event(cmd: UpsertCustomer, customer_id: str, *, created: bool) -> CloudEvent:
    cls: type[CustomerCreated] | type[CustomerUpdated] = (
        CustomerCreated if created else CustomerUpdated
    )
    spec = cmd.data
    return cls(
        source=SOURCE,
        subject=spec.external_id,
        data=CustomerData(**spec.model_dump(), customer_id=customer_id),
        **cmd.caused(),
    )


def plan_created(cmd: CreatePlan, plan_id: str) -> PlanCreated:
    spec = cmd.data
    return PlanCreated(
        source=SOURCE,
        subject=spec.key,
        data=PlanData(**spec.model_dump(), plan_id=plan_id),
        **cmd.caused(),
    )


def subscription_event(
    cls: SubscriptionEvent, data: SubscriptionData, **envelope: Any
) -> CloudEvent:
    return cls(source=SOURCE, subject=data.subscription_id, data=data, **envelope)


def invoice_event(cls: InvoiceEvent, data: InvoiceData, **envelope: Any) -> CloudEvent:
    return cls(source=SOURCE, subject=data.invoice_id, data=data, **envelope)

"""Invoicing domain logic, pure: billing periods, subscriptions moving from period to period,
invoice lines, late-usage adjustments, totals, invoice state changes, and every event
invoicing emits. No I/O; the commands, the payment handlers and the billing jobs bring the
data (ARCHITECTURE.md §1)."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

from schemas.envelope import TENANT_ID_PATTERN, CloudEvent, new_id, utcnow
from schemas.invoicing import (
    CreatePlan,
    CustomerCreated,
    CustomerData,
    CustomerSpec,
    CustomerUpdated,
    InvoiceCreated,
    InvoiceData,
    InvoiceFinalized,
    InvoiceKind,
    InvoiceLine,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoicePaymentRecorded,
    InvoiceRefunded,
    InvoiceStatus,
    InvoiceVoided,
    InvoicingConfig,
    PlanCreated,
    PlanData,
    SubscriptionCreated,
    SubscriptionData,
    SubscriptionEnded,
    SubscriptionTrialWillEnd,
    SubscriptionUpdated,
    UpsertCustomer,
)
from schemas.pricing import FlatPrice, MeteredPrice, PlanSpec, Price
from schemas.receipts import receipt_id
from schemas.taxes import Buyer, TaxAmount
from workers.invoicing import amounts, pricing
from workers.invoicing.errors import InvalidTransition

# an invoice's lines and totals are in amounts.py; they stay reachable from here
ROUNDING, MAX_AMOUNT = amounts.ROUNDING, amounts.MAX_AMOUNT
AFTER_TAX, BEFORE_TAX = amounts.AFTER_TAX, amounts.BEFORE_TAX
CREDIT, DISCOUNT = amounts.CREDIT, amounts.DISCOUNT
Line = amounts.Line
Totals = amounts.Totals
taxed, totals, with_taxes = amounts.taxed, amounts.totals, amounts.with_taxes
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


# --- invoice lines ------------------------------------------------------------------


def unit_price(price: Price) -> Decimal | None:
    if isinstance(price, FlatPrice):
        return price.amount
    if price.kind == "per_unit":
        return price.unit_price
    if price.kind == "package":
        return price.package_price
    return None  # tiered: see the tier breakdown


def usage_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The hour-aligned window of metered usage billed for [start, end): a period cut
    inside an hour (an immediate cancel or plan change) bills that hour's usage before the
    cut, the period after it from the next hour (no hour billed twice, none lost)."""
    return ceil_hour(start), ceil_hour(end)


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
    usage_billed: bool = True  # False: a trial's usage, shown with amount 0
    # the customers whose usage is billed on this invoice besides ``subject``, each in a
    # section of its own (invoice_to 'parent', docs/hierarchies.md), by external id
    sections: tuple[str, ...] = ()


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
        tax_names=tax_names(ctx.plan, price),
    )
    if metered and not ctx.usage_billed:  # a trial's usage: shown, not billed
        line = replace(line, amount=0, tiers=(), minimum_applied=False)
    return priced, line


def tax_names(plan: PlanSpec, price: Price) -> tuple[str, ...] | None:
    """The tax rates a plan's line names: its price's, else its plan's (None: neither)."""
    names = price.tax_rates if price.tax_rates is not None else plan.tax_rates
    return None if names is None else tuple(names)


def invoice_lines(
    ctx: InvoiceContext,
    usage: Mapping[str, Decimal | None],
    section_usage: Mapping[tuple[str, str], Decimal | None] | None = None,
) -> list[Line]:
    """One line per price of the plan: flat fees prorated, metered prices from ``usage``
    (meter key -> the period's value), each line rounded once to minor units.

    Then a section per customer of ``ctx.sections``: one line per metered price of the plan
    priced on that customer's usage alone (``section_usage``: (subject, meter) -> value),
    its ``subject`` naming the section; flat fees are billed once, in the payer's part."""
    start, end = usage_window(ctx.period_start, ctx.period_end)
    lines: list[Line] = []
    for price in ctx.plan.prices:
        if isinstance(price, FlatPrice):
            lines.append(_priced_line(ctx, price, Decimal(1), ctx.period_start, ctx.period_end)[1])
        else:
            quantity = usage.get(price.meter) or Decimal(0)
            lines.append(_priced_line(ctx, price, quantity, start, end)[1])
    for subject in ctx.sections:
        section = replace(ctx, subject=subject, sections=())
        for price in metered_prices(ctx.plan):
            quantity = (section_usage or {}).get((subject, price.meter)) or Decimal(0)
            lines.append(_priced_line(section, price, quantity, start, end)[1])
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
                tax_names=tax_names(b.ctx.plan, b.price),
            )
        )
    return lines


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
    breakdown: Sequence[TaxAmount] | None = None,
    buyer: Buyer | None = None,
) -> InvoiceData:
    """The event/API view of an invoice's values (``status`` overrides the row's).

    ``breakdown`` and ``buyer``: the models of the row's ``tax_breakdown`` and ``buyer``
    when the caller has them (a billing run): with them, and every other value already of
    the type validation gives it, the view is built without validation — the same view
    (tests/unit/test_invoicing_contracts.py)."""
    values: dict[str, Any] = {
        "invoice_id": row["id"],
        "number": row["number"],
        "status": status or row["status"],
        "customer": customer,
        "subscription_id": row["subscription_id"],
        "kind": row.get("kind") or "subscription",
        "currency": row["currency"],
        "period_start": row["period_start"],
        "period_end": row["period_end"],
        "subtotal": row["subtotal"],
        "discount": row.get("discount") or 0,
        "tax": row["tax"],
        "tax_inclusive": row.get("tax_inclusive") or 0,
        "total": row["total"],
        "credits": row.get("credits") or 0,
        "amount_paid": row["amount_paid"],
        "amount_credited": row.get("amount_credited") or 0,
        "amount_due": amount_due(row),
        "amount_refunded": row.get("amount_refunded") or 0,
        "tax_rate": row["tax_rate"],
        "tax_breakdown": row.get("tax_breakdown") or [],
        "tax_note": row.get("tax_note"),
        "buyer": row.get("buyer"),
        "due_at": row.get("due_at"),
        "memo": row.get("memo"),
        "receipt_id": (
            receipt_id(row["tenant_id"], "invoice", row["id"])
            if row["number"] is not None
            else None
        ),
        "pdf_url": f"/v1/invoices/{row['id']}/pdf" if row["number"] is not None else None,
        "lines": list(lines),
    }
    if breakdown is not None and (values["buyer"] is None) == (buyer is None):
        constructed = _constructed(values, list(breakdown), buyer)
        if constructed is not None:
            return constructed
    return InvoiceData(**values)


_STATUSES = frozenset(get_args(InvoiceStatus))
_KINDS = frozenset(get_args(InvoiceKind))
_INTS = (
    "subtotal", "discount", "tax", "tax_inclusive", "total", "credits", "amount_paid",
    "amount_credited", "amount_due", "amount_refunded",
)  # fmt: skip
_TEXTS = ("number", "subscription_id", "tax_note", "memo", "receipt_id", "pdf_url")


def _constructed(
    values: dict[str, Any], breakdown: list[TaxAmount], buyer: Buyer | None
) -> InvoiceData | None:
    """``InvoiceData`` of ``values`` built without validation, or None when a value is not
    already what validation would make of it (then the caller validates)."""
    v, rate, due = values, values["tax_rate"], values["due_at"]
    plain = (
        type(v["invoice_id"]) is str
        and type(v["customer"]) is str
        and type(v["currency"]) is str
        and v["status"] in _STATUSES
        and v["kind"] in _KINDS
        and all(v[k] is None or type(v[k]) is str for k in _TEXTS)
        and all(type(v[k]) is int for k in _INTS)
        and all(
            type(v[k]) is datetime and v[k].tzinfo is not None
            for k in ("period_start", "period_end")
        )
        and (due is None or (type(due) is datetime and due.tzinfo is not None))
        and (rate is None or (type(rate) is Decimal and rate.is_finite()))
        and len(breakdown) == len(v["tax_breakdown"])
        and all(type(a) is TaxAmount for a in breakdown)
        and all(type(ln) is InvoiceLine for ln in v["lines"])
    )
    if not plain:
        return None
    return InvoiceData.model_construct(**(v | {"tax_breakdown": breakdown, "buyer": buyer}))


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
        "tax_inclusive": t.tax_inclusive,
        "tax_breakdown": [a.json for a in t.computed.breakdown],
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

SubscriptionEvent = (
    type[SubscriptionCreated]
    | type[SubscriptionUpdated]
    | type[SubscriptionEnded]
    | type[SubscriptionTrialWillEnd]
)
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
    if envelope.keys() == {"tenantid"} and _known_tenant(envelope["tenantid"]):
        # a billing run's event (no cause): the values are the run's own, already checked
        # (an invoice id, a stored tenant id); the same envelope validation would give
        return cls.model_construct(
            id=new_id(), source=SOURCE, time=utcnow(), subject=data.invoice_id, data=data,
            tenantid=envelope["tenantid"],
        )  # fmt: skip
    return cls(source=SOURCE, subject=data.invoice_id, data=data, **envelope)


_TENANTS: set[str] = set()
_TENANT = re.compile(TENANT_ID_PATTERN)


def _known_tenant(tenant: object) -> bool:
    """Whether ``tenant`` is a valid tenant id (remembered: a run bills a few tenants)."""
    if tenant in _TENANTS:
        return True
    if type(tenant) is not str or _TENANT.fullmatch(tenant) is None:
        return False
    if len(_TENANTS) > 10_000:
        _TENANTS.clear()
    _TENANTS.add(tenant)
    return True

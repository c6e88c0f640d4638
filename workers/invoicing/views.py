"""Invoicing's views: its rows as the contracts the API and the events show (subscriptions,
invoices and their lines, the tenant's settings), and the one read other contexts make of
it (``draft_totals``: the spend alerts watch). What other packages may import of invoicing
is re-exported by its face, ``workers/invoicing/__init__.py``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from schemas.invoicing import (
    CustomerSpec,
    InvoiceData,
    InvoiceLine,
    InvoicingConfig,
    SubscriptionData,
)
from schemas.pricing import PlanSpec
from storage.invoicing import INVOICE_COLUMNS, InvoicingRepository
from workers.invoicing import service, taxes, taxing
from workers.invoicing.errors import TaxRateNotInForce
from workers.invoicing.lines import InvoiceMaker, rolled_up_subjects
from workers.invoicing.service import usage_window
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import (
        Customer,
        Invoice,
        InvoiceLineRow,
        InvoicingConfigRow,
        Plan,
        Subscription,
    )
    from workers.invoicing.lifecycle import SubscriptionState

__all__ = [
    "DraftPeriod",
    "config_of",
    "customer_spec",
    "draft_amounts",
    "draft_totals",
    "invoice_data",
    "line_models",
    "subscription_data",
    "usage_window",
    "values",
]


def subscription_data(
    sub: Subscription | SubscriptionState, customer: str, plans: Mapping[str, Plan]
) -> SubscriptionData:
    """``sub`` as the API and the subscription events show it (``customer``: its external
    id; ``plans``: by id, with the plan and the next plan of ``sub``)."""
    return SubscriptionData(
        subscription_id=sub.id,
        customer=customer,
        plan=plans[sub.plan_id].key,
        status="ended" if sub.status == "ended" else "active",
        start=sub.start,
        current_period_start=sub.current_period_start,
        current_period_end=sub.current_period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        next_plan=plans[sub.next_plan_id].key if sub.next_plan_id else None,
        ended_at=sub.ended_at,
        trial_start=sub.start if sub.trial_end else None,
        trial_end=sub.trial_end,
    )


def values(invoice: Invoice) -> dict[str, Any]:
    """Every column of ``invoice``, by name (read from the loaded state when every column
    is loaded: what the attributes would return, without their descriptors)."""
    state = invoice.__dict__
    try:
        return {c: state[c] for c in INVOICE_COLUMNS}
    except KeyError:  # expired or not loaded: the attributes load it
        return {c: getattr(invoice, c) for c in INVOICE_COLUMNS}


def line_models(rows: Iterable[InvoiceLineRow]) -> list[InvoiceLine]:
    return [
        InvoiceLine.model_validate(
            {c: getattr(r, c) for c in InvoiceLine.model_fields if c not in ("tiers", "taxes")}
            | {"tiers": r.tiers, "taxes": r.taxes or []}
        )
        for r in rows
    ]


def invoice_data(invoice: Invoice, customer: str, lines: Iterable[InvoiceLineRow]) -> InvoiceData:
    """``invoice`` with its ``lines`` as the API and the invoice events show it."""
    return service.invoice_data(values(invoice), customer, line_models(lines))


def customer_spec(c: Customer) -> CustomerSpec:
    return CustomerSpec(
        external_id=c.external_id,
        name=c.name,
        email=c.email,
        currency=c.currency,
        tax_rate=Decimal(c.tax_rate) if c.tax_rate is not None else None,
        tax_exempt=c.tax_exempt,
        tax_rates=c.tax_rates,
        tax_status=c.tax_status,
        tax_ids=c.tax_ids or [],
        net_terms_days=c.net_terms_days,
        billing_address=c.billing_address,
        locale=c.locale,
        parent=c.parent,
        invoice_to=c.invoice_to,
    )


def same_customer(a: CustomerSpec, b: CustomerSpec) -> bool:
    """Whether ``a`` and ``b`` say the same (``tax_exempt`` and ``tax_status`` alike)."""

    def norm(c: CustomerSpec) -> CustomerSpec:
        return c.model_copy(
            update={"tax_status": c.taxability, "tax_exempt": c.taxability == "exempt"}
        )

    return norm(a) == norm(b)


def config_of(row: InvoicingConfigRow | None) -> InvoicingConfig:
    """A tenant's invoicing settings (the defaults until it configures them)."""
    if row is None:
        return service.DEFAULT_CONFIG
    return InvoicingConfig(
        rounding=row.rounding,
        grace_period_hours=row.grace_period_hours,
        number_prefix=row.number_prefix,
        credit_note_prefix=row.credit_note_prefix,
        credits_apply=row.credits_apply,
        late_usage_grace_hours=row.late_usage_grace_hours,
        trial_will_end_days=row.trial_will_end_days,
        tax_rates=row.tax_rates or [],
        tax_rounding=row.tax_rounding or "invoice",
        **{k: v for k in _NOTES if (v := getattr(row, k)) is not None},
    )


_NOTES = ("reverse_charge_note", "exempt_note")  # null in the row: the default


# --- the spend of current periods (alerts) ------------------------------------------


@dataclass(frozen=True)
class DraftPeriod:
    """A subject's current period under its subscription: what its invoice is computed from."""

    tenant_id: str
    subject: str
    plan: PlanSpec
    currency: str
    start: datetime
    end: datetime
    tax_rate: Decimal | None  # the customer's bare rate (None if exempt)
    rounding: str | None  # the tenant's invoicing rounding; None: invoicing's default
    tax_rates: Sequence[str] | None = None  # the customer's rates by name (docs/taxes.md)
    tax_status: str = "taxable"


async def draft_totals(tx: Tx, periods: Sequence[DraftPeriod]) -> list[int]:
    """The total, in minor units, of the invoice each period would get if it closed now,
    computed exactly as invoicing computes a draft (usage read in one go)."""
    return [t.total for t in await draft_amounts(tx, periods)]


async def draft_amounts(tx: Tx, periods: Sequence[DraftPeriod]) -> list[service.Totals]:
    """The totals of the invoice each period would get if it closed now (a payer's with
    the sections of the customers it bills, docs/hierarchies.md)."""
    sections = await rolled_up_subjects(tx, {(p.tenant_id, p.subject) for p in periods})
    contexts = [
        (
            p.tenant_id,
            service.InvoiceContext(
                plan=p.plan,
                subject=p.subject,
                currency=p.currency,
                period_start=p.start,
                period_end=p.end,
                proration=Decimal(1),
                rounding=p.rounding or service.DEFAULT_CONFIG.rounding,
                sections=sections.get((p.tenant_id, p.subject), ()),
            ),
        )
        for p in periods
    ]
    all_lines = await InvoiceMaker(tx).lines(contexts)
    tenants = {p.tenant_id for p in periods}
    rows = await tx.repo(InvoicingRepository).configs(tenants)
    books = await taxing.books(tx, {t: config_of(rows.get(t)) for t in tenants})
    return [
        _projected(books[p.tenant_id], p, lines, ctx.rounding)
        for p, (_, ctx), lines in zip(periods, contexts, all_lines, strict=True)
    ]


def _projected(
    book: taxes.Book, p: DraftPeriod, lines: list[service.Line], rounding: str
) -> service.Totals:
    """The totals of ``lines`` taxed as the draft will be; a rate in force nowhere in the
    period (the draft will be quarantined) projects the bare rate alone."""
    names = None if p.tax_rates is None else tuple(p.tax_rates)
    status = p.tax_status if p.tax_status in ("exempt", "reverse_charge") else "taxable"
    party = taxes.Party(names, p.tax_rate, status)  # type: ignore[arg-type]
    try:
        resolved = book.resolve(lines, party)
    except TaxRateNotInForce:
        return service.totals(lines, p.tax_rate, p.currency, rounding)
    return service.totals(resolved, book.taxation(party), p.currency, rounding)

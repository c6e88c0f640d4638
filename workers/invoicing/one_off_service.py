"""One-off invoices, pure: their lines from what the caller gives (each rounded once), the
values of their draft row, and what an idempotency key compares (docs/one-off-invoices.md).
No I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from schemas.bounds import MAX_MINOR_UNITS
from schemas.one_off import OneOffInvoiceSpec, OneOffLine
from workers.invoicing import amounts, pricing
from workers.invoicing.errors import AmountOutOfRange, Conflict
from workers.invoicing.taxes import Taxation

ONE_OFF = "one_off"  # the invoice's kind, its lines' kind, and a line's default price key


def line(spec: OneOffLine, currency: str, rounding: str, at: datetime) -> amounts.Line:
    """One line: ``quantity * unit_price`` rounded once to minor units of ``currency``; the
    line's own tax rate when it has one (else the invoice's applies)."""
    return amounts.Line(
        price_key=spec.item or ONE_OFF,
        kind=ONE_OFF,
        description=spec.description,
        meter=None,
        subject=None,
        period_start=spec.period_start or at,
        period_end=spec.period_end or at,
        quantity=spec.quantity,
        unit_price=spec.unit_price,
        tiers=(),
        proration=Decimal(1),
        minimum_applied=False,
        amount=pricing.to_minor(
            spec.quantity * spec.unit_price, currency, amounts.ROUNDING[rounding]
        ),
        tax_rate=spec.tax_rate,
        tax_names=None if spec.tax_rates is None else tuple(spec.tax_rates),
    )


def lines(
    spec: OneOffInvoiceSpec, currency: str, rounding: str, at: datetime, *, tax_exempt: bool
) -> list[amounts.Line]:
    """Every line of the invoice. A line may come to at most 10**15 minor units (so 250
    lines and their tax always fit); a tax-exempt customer's lines carry no tax rate of
    their own but 0. Refused with the field named (``lines[i].…``)."""
    out: list[amounts.Line] = []
    for i, spec_line in enumerate(spec.lines):
        if tax_exempt and spec_line.tax_rate:
            raise Conflict(
                "the customer is tax exempt: its lines carry no tax", field=f"lines[{i}].tax_rate"
            )
        ln = line(spec_line, currency, rounding, at)
        if ln.amount > MAX_MINOR_UNITS:
            raise AmountOutOfRange(
                f"the line comes to {ln.amount} minor units of {currency}; at most "
                f"{MAX_MINOR_UNITS}",
                field=f"lines[{i}].unit_price",
            )
        out.append(ln)
    return out


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # "1.50" and "1.5" are the same price
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def digest(spec: OneOffInvoiceSpec, currency: str) -> str:
    """What an idempotency key stands for: the customer, the currency, the lines (numbers by
    value), the memo and whether to finalize at once; not the invoice id or the key."""
    content = _canonical(spec.model_dump(exclude={"invoice_id", "idempotency_key", "currency"}))
    content["currency"] = currency
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def draft_row(
    spec: OneOffInvoiceSpec,
    tenant_id: str,
    customer_id: str,
    currency: str,
    tax_rate: Decimal | None,
    taxation: Taxation,
    rounding: str,
    lines: Sequence[amounts.Line],
    at: datetime,
) -> dict[str, Any]:
    """The draft's row: no subscription, no plan, its period the moment it was asked for
    (its lines name what they cover), its totals from its lines (``totals``, not a
    column: the caller pops it)."""
    t = amounts.totals(lines, taxation, currency, rounding)
    return {
        "id": spec.invoice_id,
        "tenant_id": tenant_id,
        "customer_id": customer_id,
        "subscription_id": None,
        "plan_id": None,
        "kind": ONE_OFF,
        "status": "draft",
        "number": None,
        "currency": currency,
        "period_start": at,
        "period_end": at,
        "proration": Decimal(1),
        "usage_billed": True,
        "subtotal": t.subtotal,
        "discount": 0,
        "tax": t.tax,
        "tax_inclusive": t.tax_inclusive,
        "tax_breakdown": [a.model().model_dump(mode="json") for a in t.computed.breakdown],
        "total": t.total,
        "credits": 0,
        "amount_paid": 0,
        "tax_rate": tax_rate,
        "rounding": rounding,
        "finalize_after": at,  # never by a billing run (they leave one-off drafts alone)
        "usage_offsets": None,
        "idempotency_key": spec.idempotency_key,
        "request_digest": digest(spec, currency),
        "memo": spec.memo,
        "totals": t,
    }


def stored_line(row: Any) -> amounts.Line:
    """A stored line of a one-off draft (an ``InvoiceLineRow``) as the ``Line`` it was."""
    return amounts.Line(
        price_key=row.price_key,
        kind=row.kind,
        description=row.description,
        meter=row.meter,
        subject=row.subject,
        period_start=row.period_start,
        period_end=row.period_end,
        quantity=Decimal(row.quantity),
        unit_price=None if row.unit_price is None else Decimal(row.unit_price),
        tiers=(),
        proration=Decimal(row.proration),
        minimum_applied=row.minimum_applied,
        amount=row.amount,
        tax_rate=None if row.tax_rate is None else Decimal(row.tax_rate),
        tax_names=None if row.tax_names is None else tuple(row.tax_names),
    )

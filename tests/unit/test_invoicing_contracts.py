"""A billing run builds its invoice views and events without validating values it computed
itself (``Line.model``, ``service.invoice_data`` with the breakdown and buyer models,
``service.invoice_event``) and writes the lines' JSON columns straight: the JSON must be
byte for byte what the validated models give, for every kind of line (flat, per unit,
tiered, late usage, discount, credit, own tax rate) and invoice (draft, finalized with a
buyer, paid); anything not plainly of the right type falls back to validation."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from schemas.invoicing import InvoiceCreated, InvoiceData, InvoiceFinalized, InvoiceLine, TierLine
from schemas.pricing import FlatPrice, GraduatedPrice, PerUnitPrice, PlanSpec, Tier, VolumePrice
from schemas.taxes import Buyer, TaxId
from storage.invoicing.bulk import _json as bulk_json
from workers.invoicing import service, taxes
from workers.invoicing.amounts import Line
from workers.invoicing.lines import line_values
from workers.invoicing.taxes import Rate, TaxAmount, Taxation

D = Decimal
JAN = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
VAT = Rate("vat", "VAT 19 %", D(19), id="vat-de", country="DE")
PPN = Rate("ppn", "PPN", D(12), base=Fraction(11, 12), id="ppn-2025", country="ID")
INCL = Rate("gst", "GST", D("10.0"), inclusive=True, id="gst-i", jurisdiction="NSW")

PLAN = PlanSpec(
    key="pro",
    name="Pro",
    currency="USD",
    interval="month",
    prices=[
        FlatPrice(key="base", name="Base fee", amount=D("10")),
        PerUnitPrice(
            key="calls", name="Calls", meter="calls", unit_price=D("0.001"),
            included_quantity=D(100),
        ),
        GraduatedPrice(
            key="grad", name="Graduated", meter="g",
            tiers=[
                Tier(up_to=D(500), unit_price=D("0.002")),
                Tier(up_to=D(900), unit_price=D("0.0015"), flat_fee=D("0.25")),
                Tier(up_to=None, unit_price=D("0.001")),
            ],
        ),
        VolumePrice(
            key="vol", name="Volume", meter="v", minimum_spend=D(2),
            tiers=[
                Tier(up_to=D(600), unit_price=D("0.003")),
                Tier(up_to=None, unit_price=D("0.0025"), flat_fee=D("0.10")),
            ],
        ),
    ],
)  # fmt: skip


def validated(ln: Line) -> InvoiceLine:
    """The line's contract as validation builds it (the path every other input takes)."""
    return InvoiceLine.model_validate(
        {
            **{f: getattr(ln, f) for f in InvoiceLine.model_fields if f not in ("tiers", "taxes")},
            "tiers": [vars(p) for p in ln.tiers],
            "taxes": [t.model().model_dump() for t in ln.tax_amounts],
        }
    )


def computed_lines(sections: tuple[str, ...] = ()) -> list[Line]:
    ctx = service.InvoiceContext(
        plan=PLAN, subject="cust-1", currency="USD", period_start=JAN[0],
        period_end=JAN[1], proration=D("0.5"), rounding="half_even", sections=sections,
    )  # fmt: skip
    usage = {"calls": D("1234.5"), "g": D(1500), "v": D(700)}
    section_usage = {(s, m): D(42) for s in sections for m in usage}
    lines = service.invoice_lines(ctx, usage, section_usage)
    extra = [
        replace(lines[1], description="Calls — late usage", adjustment_for="2023-12", amount=-7),
        replace(lines[0], kind="discount", applies_to=0, discount_id="d-1", amount=-100),
        replace(lines[0], kind="credit", grant_id="g-1", amount=-50, quantity=D("1.000")),
        replace(lines[0], price_key="one-off", tax_rate=D("0.075"), unit_price=None),
    ]
    return lines + extra


def taxed(lines: list[Line], *rates: Rate) -> tuple[list[Line], service.Totals]:
    lines = [replace(ln, rates=rates or None) for ln in lines]
    t = service.totals(lines, Taxation((), "taxable", "invoice"), "USD", "half_even")
    return service.with_taxes(lines, t), t


@pytest.mark.parametrize("rates", [(), (VAT,), (VAT, PPN), (INCL,)])
def test_lines_dump_as_validated(rates: tuple[Rate, ...]) -> None:
    lines, _ = taxed(computed_lines(("child-a", "child-b")), *rates)
    assert any(ln.tiers for ln in lines) and (not rates or any(ln.tax_amounts for ln in lines))
    for ln in lines:
        assert ln.model().model_dump_json() == validated(ln).model_dump_json()
        assert ln.model() == validated(ln)
    rows = line_values("inv-1", "t1", lines)
    for row, ln in zip(rows, lines, strict=True):
        tiers = [TierLine.model_validate(vars(p)).model_dump(mode="json") for p in ln.tiers]
        amounts = [t.model().model_dump(mode="json") for t in ln.tax_amounts]
        assert row["tiers"] == tiers and row["taxes"] == amounts
        # what bulk sends for them: their JSON text, the same values
        assert json.loads(row["tiers"].text) == tiers and json.loads(row["taxes"].text) == amounts
        assert bulk_json(row["tiers"]) == row["tiers"].text
    assert bulk_json([{"a": 1}]) == '[{"a": 1}]' and bulk_json(None) is None


def test_a_line_not_plainly_typed_is_validated() -> None:
    ln = computed_lines()[0]
    odd = replace(ln, quantity=3, amount=True)  # type: ignore[arg-type]
    assert odd.model().quantity == D(3) and odd.model().amount == 1
    assert odd.model().model_dump_json() == validated(odd).model_dump_json()


def test_tax_amount_models_shared_only_when_they_show_the_same() -> None:
    twenty, twenty_0 = Rate("t", "Tax", D(20)), Rate("t", "Tax", D("20.0"))
    a, b = TaxAmount(twenty, 1000, 1000, 200), TaxAmount(twenty_0, 1000, 1000, 200)
    assert a.rate == b.rate  # equal rates, shown apart
    assert a.model().percentage.as_tuple() != b.model().percentage.as_tuple()
    assert a.json["percentage"] == "20" and b.json["percentage"] == "20.0"
    assert TaxAmount(twenty, 1000, 1000, 200).model() is a.model()
    assert TaxAmount(twenty, 1000, 1000, 201).model().tax == 201


def row_of(t: service.Totals, **kw: Any) -> dict[str, Any]:
    return {
        "id": "0190c0de-0000-7000-8000-000000000001", "tenant_id": "acme", "number": None,
        "status": "draft", "subscription_id": "sub-1", "currency": "USD",
        "period_start": JAN[0], "period_end": JAN[1], "subtotal": t.subtotal, "tax": t.tax,
        "tax_inclusive": t.tax_inclusive, "total": t.total, "amount_paid": 0,
        "tax_rate": D("0.20"), "tax_breakdown": [a.json for a in t.computed.breakdown], **kw,
    }  # fmt: skip


def same_event(fast: Any, slow: Any) -> None:
    assert fast.model_dump_json(exclude={"id", "time"}) == slow.model_dump_json(
        exclude={"id", "time"}
    )
    assert fast.to_json().decode().index('"data"') > 0


@pytest.mark.parametrize("rates", [(), (VAT, PPN), (INCL,)])
def test_invoice_views_and_events_as_validated(rates: tuple[Rate, ...]) -> None:
    lines, t = taxed(computed_lines(("child-a",)), *rates)
    models = [ln.model() for ln in lines]
    breakdown = [a.model() for a in t.computed.breakdown]
    draft = row_of(t)
    fast = service.invoice_data(draft, "cust-1", models, breakdown=breakdown)
    slow = service.invoice_data(draft, "cust-1", models)
    assert fast == slow and fast.model_dump_json() == slow.model_dump_json()
    created = service.invoice_event(InvoiceCreated, fast, tenantid="acme")
    same_event(
        created,
        InvoiceCreated(source=service.SOURCE, subject=fast.invoice_id, data=slow, tenantid="acme"),
    )
    assert created.id != service.invoice_event(InvoiceCreated, fast, tenantid="acme").id

    buyer = Buyer(
        name="Acme GmbH", email="ap@acme.example",
        tax_ids=[TaxId(type="eu_vat", value="DE123456789")],
        billing_address={"line1": "Hauptstr. 1", "country": "DE"}, tax_status="taxable",
        locale="id",
    )  # fmt: skip
    at = JAN[1] + timedelta(hours=73)
    final = draft | service.finalized(draft, t, D("0.20"), "INV-2024-000001", at, 14)
    final |= {"tax_note": None, "buyer": buyer.model_dump(mode="json")}
    fast = service.invoice_data(
        final, "cust-1", models, status="finalized", breakdown=breakdown, buyer=buyer
    )
    slow = service.invoice_data(final, "cust-1", models, status="finalized")
    assert fast == slow and fast.model_dump_json() == slow.model_dump_json()
    assert fast.receipt_id is not None and fast.buyer == buyer
    same_event(
        service.invoice_event(InvoiceFinalized, fast, tenantid="acme"),
        InvoiceFinalized(
            source=service.SOURCE, subject=fast.invoice_id, data=slow, tenantid="acme"
        ),
    )
    paid_fast, paid_slow = (v.model_copy(update={"status": "paid"}) for v in (fast, slow))
    assert paid_fast.model_dump_json() == paid_slow.model_dump_json()


def test_views_fall_back_to_validation() -> None:
    lines, t = taxed(computed_lines(), VAT)
    models = [ln.model() for ln in lines]
    breakdown = [a.model() for a in t.computed.breakdown]
    odd = row_of(t, subtotal=D(t.subtotal), tax_rate=0)  # not plainly typed: validated
    view = service.invoice_data(odd, "cust-1", models, breakdown=breakdown)
    assert isinstance(view, InvoiceData) and type(view.subtotal) is int and view.tax_rate == 0
    with pytest.raises(ValueError):
        service.invoice_data(row_of(t, status="bogus"), "cust-1", models, breakdown=breakdown)
    caused = service.invoice_event(
        InvoiceCreated, view, tenantid="acme", correlationid="c-1", causationid="c-1"
    )
    assert caused.correlationid == "c-1"
    with pytest.raises(ValueError):
        service.invoice_event(InvoiceCreated, view, tenantid="Not A Tenant")
    assert taxes.TaxAmount(VAT, 1, 1, 0).json["tax_rate_id"] == "vat-de"


def test_evolve_is_replace_for_a_line() -> None:
    assert not hasattr(Line, "__post_init__")
    assert all(f.init for f in fields(Line))
    lines, t = taxed(computed_lines(), VAT, PPN)
    for ln, amounts in zip(lines, t.computed.lines, strict=True):
        for changes in ({"rates": (VAT,)}, {"tax_amounts": amounts}, {"amount": 7, "rates": None}):
            copy = taxes.evolve(ln, **changes)
            assert copy == replace(ln, **changes) and type(copy) is Line and copy is not ln
            assert repr(copy) == repr(replace(ln, **changes))

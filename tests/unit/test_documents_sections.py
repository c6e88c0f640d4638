"""A consolidated invoice's sections (docs/hierarchies.md): the pure grouping of its lines by
customer (workers/documents/sections.py) and the PDF that prints a header per customer over
its lines, read back with pypdf. Amounts by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from schemas.invoicing import InvoiceData, InvoiceLine
from schemas.taxes import Buyer
from tests.unit.test_documents_render import (
    HOSTED,
    RENDERED,
    assert_shows,
    invoice,
    render,
    seller,
    text,
)
from tests.unit.test_documents_render import (
    line as flat_line,
)
from workers.documents import (
    Section,
    render_invoice_pdf,
    section_customers,
    section_of,
    sections,
)


def metered(subject: str | None, amount: int, quantity: int, **kw: Any) -> InvoiceLine:
    return flat_line(
        "Parking sessions",
        amount,
        price_key="sessions",
        kind="per_unit",
        meter="sessions",
        subject=subject,
        quantity=Decimal(quantity),
        unit_price=Decimal("0.25"),
        **kw,
    )


def parking_invoice() -> InvoiceData:
    # USD. Platform fee $50.00 (flat, the payer's); sessions at $0.25:
    # parkco 40 → $10.00; garage-north 300 → $75.00; garage-south 120 → $30.00;
    # a 10% discount on garage-north's line → -$7.50; $5.00 of prepaid credit.
    # subtotal = 50.00 + 10.00 + 75.00 + 30.00 = $165.00
    # total = 165.00 - 7.50 - 5.00 = $152.50
    lines = [
        flat_line("Platform fee", 5000, unit_price=Decimal(50)),
        metered("parkco", 1000, 40),
        metered("garage-north", 7500, 300),
        metered("garage-south", 3000, 120),
        flat_line("10% off", -750, kind="discount", applies_to=2, quantity=Decimal(0)),
        flat_line("Prepaid credit", -500, kind="credit", grant_id="g_1", quantity=Decimal(0)),
    ]
    return invoice(
        "USD",
        lines,
        customer="parkco",
        subtotal=16500,
        discount=750,
        credits=500,
        tax=0,
        total=15250,
        amount_due=15250,
        buyer=Buyer(name="ParkCo Holdings"),
    )


NAMES = {"garage-north": "North Garage", "garage-south": "South Garage"}


def test_each_line_belongs_to_its_customer_discounts_to_the_line_they_reduce() -> None:
    assert section_of(parking_invoice()) == [
        "parkco",  # a flat fee: the payer's
        "parkco",
        "garage-north",
        "garage-south",
        "garage-north",  # the discount of line 2
        None,  # a credit: the invoice's as a whole
    ]


def test_sections_payer_first_then_in_line_order_subtotals_of_charge_lines() -> None:
    inv = parking_invoice()
    assert section_customers(inv) == ["parkco", "garage-north", "garage-south"]
    assert sections(inv, NAMES) == [
        Section("parkco", "parkco", 5000 + 1000, (0, 1)),  # no name given: the external id
        Section("garage-north", "North Garage", 7500, (2, 4)),  # the discount is not counted
        Section("garage-south", "South Garage", 3000, (3,)),
    ]
    assert sum(s.subtotal for s in sections(inv, NAMES)) == inv.subtotal


def test_an_invoice_of_one_customer_has_no_sections() -> None:
    inv = parking_invoice()
    own = inv.model_copy(
        update={"lines": [ln for ln in inv.lines if ln.subject in (None, "parkco")]}
    )
    assert section_customers(own) == []
    assert sections(own, NAMES) == []


def test_the_pdf_prints_a_header_per_customer_over_its_lines() -> None:
    shown = text(render_with_names(parking_invoice()))
    assert_shows(
        shown,
        "ParkCo Holdings · parkco",  # the payer, named as the buyer
        "North Garage · garage-north",
        "South Garage · garage-south",
        "Subtotal $60.00",  # 50.00 + 10.00
        "Subtotal $75.00",
        "Subtotal $30.00",
        "$165.00",
        "-$7.50",
        "$152.50",
    )
    # the headers come in order: the payer, then north, then south
    at = [shown.index(h) for h in ("· parkco", "· garage-north", "· garage-south")]
    assert at == sorted(at)


def test_the_pdf_of_a_plain_invoice_has_no_section_headers() -> None:
    inv = parking_invoice()
    own = inv.model_copy(
        update={"lines": [ln for ln in inv.lines if ln.subject in (None, "parkco")]}
    )
    shown = text(render(own))
    assert "· parkco" not in shown and "Subtotal $60.00" not in shown


def render_with_names(inv: InvoiceData) -> bytes:
    return render_invoice_pdf(
        inv, seller(), locale="en", hosted_url=HOSTED, rendered_at=RENDERED, names=NAMES
    )


def test_rendering_without_names_still_prints_the_external_ids() -> None:
    shown = text(render(parking_invoice()))
    assert_shows(shown, "garage-north", "garage-south", "Subtotal $75.00")

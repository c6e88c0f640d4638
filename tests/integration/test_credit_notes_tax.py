"""Credit notes reverse tax exactly, rate by rate, end to end over HTTP (real ingress and
invoicing workers, the real broker and PostgreSQL): tax rates created through the API, a
one-off invoice whose lines name them, then notes (docs/credit-notes.md). Every amount is
computed by hand."""

from __future__ import annotations

import json
from typing import Any

from schemas import topics
from tests.integration.support import read_all
from tests.integration.test_credit_notes import note
from tests.integration.test_invoicing import Stack
from tests.integration.test_invoicing_late_usage import billing
from tests.integration.test_taxes import one_off, rate, taxes

__all__ = ["billing"]


async def customer(st: Stack, who: str, currency: str, **kw: Any) -> None:
    await st.api.ok(
        "POST", "/v1/customers", {"external_id": who, "name": who, "currency": currency, **kw}
    )


async def issued(st: Stack, invoice_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The note as the API shows it, once its command succeeded."""
    done = await note(st, invoice_id, body)
    assert done["status"] == "succeeded", done
    view: dict[str, Any] = await st.api.get(f"/v1/credit-notes/{done['credit_note_id']}")
    return view


async def test_a_ppn_line_credited_in_full_reverses_its_ppn_and_dpp(billing: Stack) -> None:
    st = billing
    ppn = rate("ppn-2025", "ppn", "12", "ID", display="PPN", taxable_base_factor="11/12")
    await st.api.ok("POST", "/v1/tax_rates", ppn)
    await customer(st, "warung", "IDR")
    line = {"description": "Catering", "quantity": "1", "unit_price": "1000000",
            "tax_rates": ["ppn"]}  # fmt: skip
    inv = await one_off(st, "warung", line)
    # Rp 1,000,000 = 100,000,000 sen: DPP 11/12 = 91,666,666.67 -> 91,666,667; PPN 12 % of it
    # = 11,000,000.04 -> 11,000,000; total Rp 1,110,000
    assert taxes(inv["tax_breakdown"]) == [
        ("ppn", "12", 100_000_000, 91_666_667, 11_000_000, "taxable")
    ]
    assert inv["total"] == 111_000_000

    # half the line: PPN 5,500,000; DPP 91,666,667 / 2 = 45,833,333.5 -> half-even 45,833,334
    by_half = {"reason": "order_change", "lines": [{"line": 0, "amount": 50_000_000}]}
    half = await issued(st, inv["invoice_id"], by_half)
    assert taxes(half["tax_breakdown"]) == [
        ("ppn", "12", 50_000_000, 45_833_334, 5_500_000, "taxable")
    ]
    assert (half["subtotal"], half["tax"], half["total"]) == (50_000_000, 5_500_000, 55_500_000)
    (ln,) = half["lines"]
    assert (ln["tax_rate"], ln["line_amount"]) == ("0.11", 50_000_000)
    assert taxes(ln["taxes"]) == taxes(half["tax_breakdown"])
    # the rest of the line reverses the rest of each figure: DPP 91,666,667 - 45,833,334
    rest = await issued(st, inv["invoice_id"], by_half)
    assert taxes(rest["tax_breakdown"]) == [
        ("ppn", "12", 50_000_000, 45_833_333, 5_500_000, "taxable")
    ]
    # together: exactly the invoice's DPP and PPN, and nothing is due
    after = await st.api.get(f"/v1/invoices/{inv['invoice_id']}")
    assert (after["status"], after["amount_credited"], after["amount_due"]) == (
        "paid", 111_000_000, 0,
    )  # fmt: skip
    # the events carry the breakdown as the API shows it
    records, _ = await read_all(st.settings, topics.EVENTS_INVOICING)
    events = [json.loads(r.value) for r in records]
    notes = [e["data"] for e in events if e["type"] == "credit_note.issued"]
    assert [taxes(n["tax_breakdown"]) for n in notes] == [
        taxes(half["tax_breakdown"]), taxes(rest["tax_breakdown"]),
    ]  # fmt: skip


async def test_an_inclusive_line_and_a_reverse_charge_invoice(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/tax_rates", rate("vat-de-19", "vat-de", "19", "DE"))
    await st.api.ok("POST", "/v1/tax_rates",
                    rate("vat-de-19-incl", "vat-de-gross", "19", "DE", inclusive=True))  # fmt: skip
    await customer(st, "anna", "EUR")
    await customer(st, "acme", "EUR", tax_status="reverse_charge",
                   tax_ids=[{"type": "eu_vat", "value": "FR40303265045"}])  # fmt: skip

    # EUR 119.00 gross at 19 % inclusive: tax 1,900, net 10,000; the customer pays 119.00
    seat = {"description": "Seat", "quantity": "1", "unit_price": "119.00",
            "tax_rates": ["vat-de-gross"]}  # fmt: skip
    gross = await one_off(st, "anna", seat)
    assert (gross["subtotal"], gross["tax"], gross["tax_inclusive"], gross["total"]) == (
        11_900, 1_900, 1_900, 11_900,
    )  # fmt: skip
    # the line in full: the amount asked is the gross; the note is 100.00 net + 19.00 tax
    whole = {"reason": "duplicate", "lines": [{"line": 0, "amount": 11_900}]}
    full = await issued(st, gross["invoice_id"], whole)
    assert (full["subtotal"], full["tax"], full["total"]) == (10_000, 1_900, 11_900)
    (ln,) = full["lines"]
    assert (ln["amount"], ln["tax"], ln["line_amount"]) == (10_000, 1_900, 11_900)
    assert taxes(full["tax_breakdown"]) == [
        ("vat-de-gross", "19", 10_000, 10_000, 1_900, "taxable")
    ]
    assert full["tax_breakdown"][0]["inclusive"] is True
    after = await st.api.get(f"/v1/invoices/{gross['invoice_id']}")
    assert (after["status"], after["amount_due"]) == ("paid", 0)
    # nothing is left of the line: one more cent is refused
    more = await note(st, gross["invoice_id"], {"reason": "other",
                                                "lines": [{"line": 0, "amount": 1}]})  # fmt: skip
    assert more["status"] == "failed" and more["error"]["field"] == "lines[0].amount", more

    # reverse charge: 100.00 with VAT shown at 0; a note by amount reverses no tax
    rc = await one_off(st, "acme", {"description": "Consulting", "quantity": "1",
                                    "unit_price": "100.00", "tax_rates": ["vat-de"]})  # fmt: skip
    assert (rc["tax"], rc["total"]) == (0, 10_000)
    cn = await issued(st, rc["invoice_id"], {"reason": "other", "amount": 4_000})
    assert (cn["subtotal"], cn["tax"], cn["total"]) == (4_000, 0, 4_000)
    assert taxes(cn["tax_breakdown"]) == [("vat-de", "19", 4_000, 4_000, 0, "reverse_charge")]

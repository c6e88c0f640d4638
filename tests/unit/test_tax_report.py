"""The tax report's rows, totals, CSV and JSON, built by hand from documents as stored
(workers/invoicing/tax_report.py, pure): every amount computed in the comments."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.tax_report import DocumentType, TaxReportRow
from workers.invoicing.tax_report import (
    COLUMNS,
    Document,
    Encoder,
    Totals,
    major,
    rows,
)

NOV = datetime(2031, 11, 1, 9, 30, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)


def amount(name: str, pct: str, taxable: int, base: int, tax: int, **kw: Any) -> dict[str, Any]:
    """A TaxAmount dict as invoices.tax_breakdown stores it."""
    return {
        "tax_rate_id": kw.pop("id", name), "name": name,
        "display_name": kw.pop("display", name.upper()), "percentage": pct,
        "inclusive": kw.pop("inclusive", False), "country": kw.pop("country", None),
        "jurisdiction": kw.pop("jurisdiction", None),
        "taxable_base_factor": kw.pop("factor", "1"), "taxable_amount": taxable,
        "taxable_base": base, "tax": tax, "taxability": kw.pop("taxability", "taxable"),
    }  # fmt: skip


def doc(
    type: DocumentType = "invoice",
    breakdown: list[dict[str, Any]] | None = None,
    *,
    currency: str = "EUR",
    net: int = 0,
    tax: int = 0,
    **kw: Any,
) -> Document:
    return Document(
        type=type,
        id=kw.pop("id", "inv_1"),
        number=kw.pop("number", "INV-2031-000001"),
        date=kw.pop("date", NOV),
        status=kw.pop("status", "finalized"),
        invoice_number=kw.pop("invoice_number", None),
        currency=currency,
        buyer=kw.pop("buyer", {"name": "Warung", "tax_ids": [], "tax_status": "taxable"}),
        breakdown=breakdown or [],
        net=net,
        tax=tax,
        legacy_rate=kw.pop("legacy_rate", None),
    )


WARUNG = {
    "name": "Warung Sederhana",
    "email": "kasir@warung.id",
    "tax_ids": [{"type": "id_npwp", "value": "0123456789012345"}],
    "billing_address": {"line1": "Jl. Sudirman 1", "city": "Jakarta", "country": "ID"},
    "tax_status": "taxable",
}
# Rp 1,000,000 = 100,000,000 sen; DPP 11/12 = 91,666,666.67 -> 91,666,667; PPN 12 % of it =
# 11,000,000.04 -> 11,000,000
PPN = amount("ppn", "12", 100_000_000, 91_666_667, 11_000_000, id="ppn-2025", display="PPN",
             country="ID", factor="11/12")  # fmt: skip


def test_a_ppn_invoice_is_one_row_with_its_dpp_and_the_buyer_as_finalized() -> None:
    (row,) = rows(doc(breakdown=[PPN], currency="IDR", buyer=WARUNG, tax=11_000_000))
    assert row.model_dump(mode="json") == {
        "document_type": "invoice", "number": "INV-2031-000001",
        "date": "2031-11-01T09:30:00Z", "status": "finalized", "invoice_number": None,
        "currency": "IDR", "buyer_name": "Warung Sederhana",
        "buyer_tax_id": "id_npwp:0123456789012345", "buyer_country": "ID",
        "tax_status": "taxable", "rate_name": "ppn", "rate_display_name": "PPN",
        "tax_rate_id": "ppn-2025", "percentage": "12", "inclusive": False,
        "taxable_base_factor": "11/12", "rate_country": "ID", "rate_jurisdiction": None,
        "taxable_amount": 100_000_000, "taxable_amount_major": "1000000.00",
        "taxable_base": 91_666_667, "taxable_base_major": "916666.67",
        "tax": 11_000_000, "tax_major": "110000.00",
    }  # fmt: skip
    assert list(row.model_dump()) == list(COLUMNS)


def test_a_reverse_charge_eu_invoice_shows_the_rate_at_0_and_every_tax_id() -> None:
    acme = {
        "name": "Acme SARL",
        "tax_ids": [
            {"type": "eu_vat", "value": "FR40303265045"},
            {"type": "other", "value": "SIREN 303265045"},
        ],
        "billing_address": {"line1": "1 rue de Rivoli", "country": "FR"},
        "tax_status": "reverse_charge",
    }
    # EUR 100.00 at 19 % reverse charged: tax 0
    vat = amount("vat-de", "19", 10_000, 10_000, 0, country="DE", taxability="reverse_charge")
    (row,) = rows(doc(breakdown=[vat], buyer=acme, net=10_000))
    assert (row.tax_status, row.percentage, row.taxable_amount, row.tax) == (
        "reverse_charge", "19", 10_000, 0,
    )  # fmt: skip
    assert (row.taxable_amount_major, row.tax_major) == ("100.00", "0.00")
    assert row.buyer_tax_id == "eu_vat:FR40303265045; other:SIREN 303265045"
    assert row.buyer_country == "FR"


def test_an_invoice_with_two_rates_is_two_rows() -> None:
    # CAD 100.00 with GST 5 % and PST 7 % on the same line: 500 and 700
    gst = amount("gst", "5", 10_000, 10_000, 500, country="CA")
    pst = amount("pst-bc", "7", 10_000, 10_000, 700, country="CA", jurisdiction="CA-BC")
    out = rows(doc(breakdown=[gst, pst], currency="CAD", net=10_000, tax=1_200))
    assert [(r.rate_name, r.taxable_amount, r.tax, r.rate_jurisdiction) for r in out] == [
        ("gst", 10_000, 500, None),
        ("pst-bc", 10_000, 700, "CA-BC"),
    ]
    assert {r.number for r in out} == {"INV-2031-000001"}


def test_a_credit_note_is_negative_and_names_its_invoice_and_its_buyer() -> None:
    # a quarter of the PPN invoice credited: 25,000,000 sen, DPP 22,916,667, PPN 2,750,000,
    # stored positive as credited; the report takes them back
    credited = PPN | {"taxable_amount": 25_000_000, "taxable_base": 22_916_667, "tax": 2_750_000}
    note = doc("credit_note", [credited], currency="IDR", id="cn_1", number="CN-2031-000001",
               status="issued", invoice_number="INV-2031-000001", buyer=WARUNG,
               date=DEC)  # fmt: skip
    (row,) = rows(note)
    assert (row.document_type, row.number, row.invoice_number, row.buyer_name) == (
        "credit_note", "CN-2031-000001", "INV-2031-000001", "Warung Sederhana",
    )  # fmt: skip
    assert (row.taxable_amount, row.taxable_base, row.tax) == (-25_000_000, -22_916_667, -2_750_000)
    assert (row.taxable_amount_major, row.taxable_base_major, row.tax_major) == (
        "-250000.00", "-229166.67", "-27500.00",
    )  # fmt: skip
    assert row.date == DEC


def test_an_invoice_from_before_breakdowns_reports_its_legacy_rate() -> None:
    # EUR 100.00 - 10.00 discount at the customer's bare 19 %: 90.00 -> 17.10
    old = doc(net=9_000, tax=1_710, legacy_rate=Decimal("0.19"))
    (row,) = rows(old)
    assert (row.rate_name, row.rate_display_name, row.tax_rate_id, row.percentage) == (
        "tax", "Tax 19 %", None, "19",
    )  # fmt: skip
    assert (row.taxable_amount, row.taxable_base, row.tax, row.inclusive) == (
        9_000, 9_000, 1_710, False,
    )  # fmt: skip
    # an old credit note of it: its invoice's rate, negated
    (cn,) = rows(doc("credit_note", net=1_000, tax=190, legacy_rate=Decimal("0.19")))
    assert (cn.percentage, cn.taxable_amount, cn.tax) == ("19", -1_000, -190)


def test_a_document_without_tax_is_one_row_with_the_rate_empty() -> None:
    exempt = {"name": "School", "tax_ids": [], "tax_status": "exempt"}
    (row,) = rows(doc(net=5_000, buyer=exempt))
    assert (row.rate_name, row.percentage, row.tax_rate_id, row.inclusive) == (
        None, None, None, None,
    )  # fmt: skip
    assert (row.tax_status, row.taxable_amount, row.tax, row.tax_major) == (
        "exempt", 5_000, 0, "0.00",
    )  # fmt: skip
    # a buyer with neither a snapshot nor a customer: the columns are empty
    (bare,) = rows(doc(net=5_000, buyer={}))
    assert (bare.buyer_name, bare.buyer_tax_id, bare.buyer_country) == (None, None, None)


def test_a_void_reverses_its_document_on_the_day_it_was_voided() -> None:
    vat = amount("vat-de", "19", 10_000, 10_000, 1_900)
    (voided,) = rows(doc("invoice_void", [vat], status="void", date=DEC))
    assert (voided.taxable_amount, voided.tax, voided.status) == (-10_000, -1_900, "void")
    (undone,) = rows(doc("credit_note_void", [vat], status="void", date=DEC))
    assert (undone.taxable_amount, undone.tax) == (10_000, 1_900)


def test_major_units_in_exponents_0_2_and_3() -> None:
    assert major(33_132, "JPY") == "33132"
    assert major(-5, "EUR") == "-0.05"
    assert major(0, "EUR") == "0.00"
    assert major(31_231, "BHD") == "31.231"
    assert major(-1, "BHD") == "-0.001"


def test_totals_per_currency_rate_and_tax_status() -> None:
    vat = amount("vat-de", "19", 10_000, 10_000, 1_900)
    rc = amount("vat-de", "19", 20_000, 20_000, 0, taxability="reverse_charge")
    totals = Totals()
    totals.add(rows(doc(breakdown=[vat])))  # + 100.00 / 19.00
    totals.add(rows(doc(breakdown=[vat], id="inv_2")))  # + 100.00 / 19.00
    totals.add(rows(doc("credit_note", [vat | {"taxable_amount": 5_000, "taxable_base": 5_000,
                                                "tax": 950}])))  # - 50.00 / 9.50  # fmt: skip
    totals.add(rows(doc(breakdown=[rc])))  # reverse charge 200.00, tax 0
    totals.add(rows(doc(net=700, currency="JPY", tax=70, legacy_rate=Decimal("0.1"))))
    totals.add(rows(doc(net=300)))  # no rate
    got = [
        (t.currency, t.rate_key, t.tax_status, t.rows, t.taxable_amount, t.tax, t.tax_major)
        for t in totals.result()
    ]
    assert got == [
        ("EUR", None, "taxable", 1, 300, 0, "0.00"),
        ("EUR", "vat-de", "reverse_charge", 1, 20_000, 0, "0.00"),
        # 10,000 + 10,000 - 5,000 = 15,000; 1,900 + 1,900 - 950 = 2,850
        ("EUR", "vat-de", "taxable", 3, 15_000, 2_850, "28.50"),
        ("JPY", "tax:10", "taxable", 1, 700, 70, "70"),
    ]


def test_csv_is_a_header_and_the_rows_and_json_has_the_totals() -> None:
    vat = amount("vat-de", "19", 10_000, 10_000, 1_900)
    page1 = rows(doc(breakdown=[vat], buyer={"name": 'Müller, "Hans"', "tax_ids": []}))
    page2 = rows(doc("credit_note", [vat], id="cn_1", number="CN-1", invoice_number="INV-1"))
    for fmt in ("csv", "json"):
        enc = Encoder(fmt, NOV, DEC)
        text = enc.head() + enc.rows(page1) + enc.rows([]) + enc.rows(page2) + enc.tail()
        assert enc.count == 2
        if fmt == "csv":
            header, *body = list(csv.reader(io.StringIO(text)))
            assert header == list(COLUMNS)
            got = [dict(zip(header, r, strict=True)) for r in body]
            assert [(r["document_type"], r["buyer_name"], r["tax"], r["inclusive"],
                     r["invoice_number"]) for r in got] == [
                ("invoice", 'Müller, "Hans"', "1900", "false", ""),
                ("credit_note", "Warung", "-1900", "false", "INV-1"),
            ]  # fmt: skip
        else:
            body = json.loads(text)
            assert (body["from"], body["to"]) == ("2031-11-01T09:30:00Z", "2031-12-01T00:00:00Z")
            assert [r["tax"] for r in body["rows"]] == [1_900, -1_900]
            assert [TaxReportRow.model_validate(r) for r in body["rows"]] == [*page1, *page2]
            (total,) = body["totals"]
            assert (total["rate_key"], total["rows"], total["tax"], total["tax_major"]) == (
                "vat-de", 2, 0, "0.00",
            )  # fmt: skip


def test_an_empty_period_is_a_header_or_empty_lists() -> None:
    csv_enc, json_enc = Encoder("csv", NOV, DEC), Encoder("json", NOV, DEC)
    assert list(csv.reader(io.StringIO(csv_enc.head() + csv_enc.rows([]) + csv_enc.tail()))) == [
        list(COLUMNS)
    ]
    body = json.loads(json_enc.head() + json_enc.rows([]) + json_enc.tail())
    assert (body["rows"], body["totals"]) == ([], [])


# --- properties ------------------------------------------------------------------------

RATES = [("vat-de", "19"), ("vat-fr", "20"), ("ppn", "12"), ("gst", "5")]
entries = st.lists(
    st.tuples(
        st.sampled_from(RATES),
        st.integers(0, 10**9),
        st.integers(0, 10**8),
        st.sampled_from(["taxable", "reverse_charge"]),
    ),
    max_size=3,
    unique_by=lambda e: e[0],
)
documents = st.lists(
    st.tuples(
        st.sampled_from(["invoice", "credit_note", "invoice_void", "credit_note_void"]),
        st.sampled_from(["EUR", "JPY", "BHD"]),
        entries,
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(documents, st.integers(1, 5))
def test_totals_per_rate_are_the_signed_sum_of_the_breakdowns_whatever_the_pages(
    docs: list[tuple[DocumentType, str, list[Any]]], page: int
) -> None:
    expected: dict[tuple[str, str], int] = defaultdict(int)
    built = []
    for i, (kind, currency, es) in enumerate(docs):
        breakdown = [
            amount(name, pct, taxable, taxable, tax if status == "taxable" else 0,
                   taxability=status)
            for (name, pct), taxable, tax, status in es
        ]  # fmt: skip
        sign = 1 if kind in ("invoice", "credit_note_void") else -1
        for b in breakdown:
            expected[(currency, b["name"])] += sign * b["tax"]
        built.append(doc(kind, breakdown, currency=currency, id=f"d{i}", net=7))
    enc = Encoder("json", NOV, DEC)
    text = enc.head()
    for start in range(0, len(built), page):
        text += enc.rows([r for d in built[start : start + page] for r in rows(d)])
    body = json.loads(text + enc.tail())
    got: dict[tuple[str, str], int] = defaultdict(int)
    for t in body["totals"]:
        if t["rate_key"] is not None:
            got[(t["currency"], t["rate_key"])] += t["tax"]
        assert Decimal(t["tax_major"]).scaleb(len(t["tax_major"].partition(".")[2])) == t["tax"]
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
    assert len(body["rows"]) == sum(max(len(es), 1) for _, _, es in docs)
    assert sum(r["tax"] for r in body["rows"]) == sum(t["tax"] for t in body["totals"])

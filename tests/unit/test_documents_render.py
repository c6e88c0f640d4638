"""Invoice PDFs (workers/documents/render.py): rendered for real by the typst wheel, read back
with pypdf. Every amount a customer sees is computed by hand here and must be printed,
formatted for the invoice's currency and locale."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pypdf import PdfReader

from schemas.documents import Branding
from schemas.invoicing import Address, InvoiceData, InvoiceLine, TierLine
from schemas.taxes import Buyer, TaxAmount, TaxId
from workers.documents import render_invoice_pdf

NOV, DEC = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
RENDERED = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
HOSTED = (
    "https://pay.example.com/hosted/invoices/v1.WyJpbnZvaWNlIiwidF8xIiwiaW52XzEiLDE3OTYwODk2"
    "MDAsImVuIl0.q1N7yJ0m8vZ5Jr4aQ0Yw3hX2bS9cT6uV1dE8fG7hK4"
)


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + bytes((200, 30, 30)) * 8 for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def seller(**kw: Any) -> Branding:
    base: dict[str, Any] = {
        "name": "Acme Cloud Ltd",
        "address": Address(line1="1 Harbour Road", city="Manama", country="BH"),
        "tax_id": "VAT-BH-200012345600002",
        "email": "billing@acme.example",
        "website": "acme.example",
        "logo": "data:image/png;base64," + base64.b64encode(tiny_png()).decode(),
        "accent_color": "#7C3AED",
        "footer": "Acme Cloud Ltd · registered in Bahrain · CR 12345-1",
    }
    base.update(kw)
    return Branding(**base)


def line(description: str, amount: int, **kw: Any) -> InvoiceLine:
    base: dict[str, Any] = {
        "price_key": "plan",
        "kind": "flat",
        "description": description,
        "period_start": NOV,
        "period_end": DEC,
        "quantity": Decimal(1),
        "tiers": [],
        "proration": Decimal(1),
        "minimum_applied": False,
        "amount": amount,
    }
    base.update(kw)
    return InvoiceLine(**base)


def invoice(currency: str, lines: list[InvoiceLine], **kw: Any) -> InvoiceData:
    base: dict[str, Any] = {
        "invoice_id": "inv_1",
        "number": "INV-2026-000042",
        "status": "finalized",
        "customer": "cust_42",
        "subscription_id": "sub_1",
        "currency": currency,
        "period_start": NOV,
        "period_end": DEC,
        "amount_paid": 0,
        "due_at": datetime(2026, 12, 15, tzinfo=UTC),
        "lines": lines,
    }
    base.update(kw)
    return InvoiceData(**base)


def render(inv: InvoiceData, branding: Branding | None = None, locale: Any = "en") -> bytes:
    return render_invoice_pdf(
        inv, branding or seller(), locale=locale, hosted_url=HOSTED, rendered_at=RENDERED
    )


def pages(pdf: bytes) -> list[str]:
    return [p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages]


def text(pdf: bytes) -> str:
    """The PDF's text as a reader sees it: no-break spaces are spaces."""
    return "\n".join(pages(pdf)).replace("\u00a0", " ")


def assert_shows(shown: str, *expected: str) -> None:
    missing = [e for e in expected if e not in shown]
    assert not missing, f"not in the PDF: {missing}\n---\n{shown}"


# --- JPY (exponent 0) -------------------------------------------------------------------------


def test_a_jpy_invoice_prints_yen_without_decimals() -> None:
    # Pro plan ¥12,000; storage 1,250 GB x ¥3.5 = ¥4,375; subtotal ¥16,375;
    # consumption tax 10% = ¥1,637.5 -> ¥1,638 (half-even rounds .5 to even: 1,638)
    tax = TaxAmount(
        name="JCT",
        display_name="Consumption tax",
        percentage=Decimal(10),
        inclusive=False,
        taxable_amount=16375,
        taxable_base=16375,
        tax=1638,
    )
    inv = invoice(
        "JPY",
        [
            line("Pro plan", 12000, unit_price=Decimal(12000)),
            line(
                "Storage (GB-month)",
                4375,
                kind="per_unit",
                quantity=Decimal(1250),
                unit_price=Decimal("3.5"),
            ),
        ],
        subtotal=16375,
        tax=1638,
        total=18013,
        amount_due=18013,
        tax_breakdown=[tax],
        buyer=Buyer(
            name="Sakura Systems KK", tax_ids=[TaxId(type="other", value="T1234567890123")]
        ),
    )
    shown = text(render(inv, seller(accent_color="#BC002D")))
    assert_shows(
        shown,
        "¥12,000",
        "¥4,375",
        "1,250",
        "¥3.5",
        "¥16,375",
        "¥1,638",
        "¥18,013",
        "Consumption tax",
        "10%",
        "Sakura Systems KK",
        "T1234567890123",
        "15 December 2026",
        "1 December 2026",  # issued when rendered
        "Due",
    )
    assert "¥18,013.00" not in shown and "¥16,375." not in shown


# --- IDR with PPN 11% ---------------------------------------------------------------------------


def idr_invoice(**kw: Any) -> InvoiceData:
    # Paket Bisnis Rp 1.000.000 + API 234.567 calls x Rp 1 = Rp 234.567: subtotal Rp 1.234.567;
    # PPN 11% = Rp 135.802,37 -> Rp 135.802 (whole rupiah); total Rp 1.370.369
    def ppn(taxable: int, tax: int) -> TaxAmount:
        return TaxAmount(
            name="PPN",
            display_name="PPN",
            percentage=Decimal(11),
            inclusive=False,
            country="ID",
            taxable_amount=taxable,
            taxable_base=taxable,
            tax=tax,
        )

    base: dict[str, Any] = {
        "subtotal": 123_456_700,
        "tax": 13_580_200,
        "total": 137_036_900,
        "amount_due": 137_036_900,
        "tax_breakdown": [ppn(123_456_700, 13_580_200)],
        "buyer": Buyer(
            name="PT Sinar Digital Indonesia",
            email="keuangan@sinar.example",
            tax_ids=[TaxId(type="id_npwp", value="0987654321098765")],
            billing_address={"line1": "Jl. Pemuda No. 118", "city": "Surabaya", "country": "ID"},
            locale="id",
        ),
    }
    base.update(kw)
    lines = base.pop("lines", None)
    return invoice(
        "IDR",
        lines
        or [
            line("Paket Bisnis", 100_000_000, unit_price=Decimal(1_000_000)),
            line(
                "Panggilan API",
                23_456_700,
                kind="per_unit",
                quantity=Decimal(234_567),
                unit_price=Decimal(1),
            ),
        ],
        **base,
    )


def test_an_idr_invoice_with_ppn_in_indonesian() -> None:
    branding = seller(
        name="PT Awan Nusantara",
        tax_id="0123456789012345",
        address=Address(line1="Jl. Sudirman 52", city="Jakarta", country="ID"),
    )
    shown = text(render(idr_invoice(), branding, locale="id"))
    assert_shows(
        shown,
        "Faktur",
        "Rp 1.000.000",  # the plan, its unit price
        "234.567",  # the calls
        "Rp 1",
        "Rp 234.567",
        "Rp 1.234.567",  # subtotal and PPN's taxable amount
        "PPN",
        "11%",
        "Rp 135.802",
        "Rp 1.370.369",  # total and amount due
        "Jumlah terutang",
        "Ditagihkan kepada",
        "PT Sinar Digital Indonesia",
        "NPWP: 0987654321098765",  # the buyer's tax ID
        "0123456789012345",  # the seller's
        "15 Desember 2026",  # due
        "Belum dibayar",
    )
    assert "Rp 1.370.369,00" not in shown
    assert HOSTED in "".join(shown.split())  # the link, wrapped over lines


def test_a_paid_invoice_says_so() -> None:
    paid = idr_invoice(status="paid", amount_paid=137_036_900, amount_due=0)
    shown = text(render(paid, locale="id"))
    assert_shows(shown, "Lunas", "Dibayar", "-Rp 1.370.369", "Rp 0")


# --- BHD (exponent 3): tiers, a discount, credits ------------------------------------------------


def test_a_bhd_invoice_with_tiers_a_discount_and_credits() -> None:
    # Business plan BHD 25.000
    # API calls 1,500, graduated: tier 1: 1,000 x BHD 0.010 = 10.000
    #                            tier 2:   500 x BHD 0.0075 + flat 1.000 = 4.750
    #                            line: BHD 14.750
    # subtotal 39.750; discount 10% of the plan: -2.500; credits -5.000
    # VAT 10% on 39.750 - 2.500 = 37.250 -> 3.725
    # total 39.750 - 2.500 - 5.000 + 3.725 = 35.975; paid 10.000; due 25.975
    tiers = [
        TierLine(
            tier=1,
            quantity=Decimal(1000),
            unit_price=Decimal("0.010"),
            flat_fee=Decimal(0),
            amount=Decimal("10.000"),
        ),
        TierLine(
            tier=2,
            quantity=Decimal(500),
            unit_price=Decimal("0.0075"),
            flat_fee=Decimal(1),
            amount=Decimal("4.750"),
        ),
    ]
    vat = TaxAmount(
        name="VAT",
        display_name="VAT",
        percentage=Decimal(10),
        inclusive=False,
        country="BH",
        taxable_amount=37250,
        taxable_base=37250,
        tax=3725,
    )
    inv = invoice(
        "BHD",
        [
            line("Business plan", 25000, unit_price=Decimal(25)),
            line(
                "API calls",
                14750,
                kind="graduated",
                meter="api_calls",
                quantity=Decimal(1500),
                tiers=tiers,
            ),
            line("Launch offer 10% off", -2500, kind="discount", applies_to=0),
            line("Prepaid credit", -5000, kind="credit", grant_id="grant_1"),
        ],
        subtotal=39750,
        discount=2500,
        credits=5000,
        tax=3725,
        total=35975,
        amount_paid=10000,
        amount_due=25975,
        tax_breakdown=[vat],
        buyer=Buyer(
            name="Gulf Trading WLL",
            email="ap@gulf.example",
            tax_ids=[TaxId(type="other", value="200098765400003")],
            billing_address={"line1": "Building 22, Road 1701", "city": "Manama", "country": "BH"},
        ),
    )
    shown = text(render(inv))
    nb = "BHD "
    assert_shows(
        shown,
        f"{nb}25.000",
        f"{nb}14.750",
        "1,500",
        "Tier 1",
        "1,000",
        f"{nb}0.010",
        f"{nb}10.000",
        "Tier 2",
        "500",
        f"{nb}0.0075",
        f"flat fee {nb}1.000",
        f"{nb}4.750",
        f"-{nb}2.500",  # the discount line and the discount total
        f"-{nb}5.000",  # the credit line and the credits total
        f"{nb}39.750",  # subtotal
        f"{nb}37.250",  # VAT's taxable amount
        f"{nb}3.725",  # VAT
        f"{nb}35.975",  # total
        f"-{nb}10.000",  # paid
        f"{nb}25.975",  # due
        "Discount",
        "Credit",
        "200098765400003",
        "VAT-BH-200012345600002",
        "15 December 2026",
    )


# --- what users typed prints as typed ------------------------------------------------------------


def test_text_from_users_is_never_markup() -> None:
    hostile = [
        '#panic("boom")',
        "*bold* _emph_ `raw`",
        "] ) } #let x = 1",
        "$x^2$ <label> @ref // not a comment",
        '#import "/etc/passwd"',
        "\\ back\\slash",
    ]
    inv = idr_invoice(
        lines=[line(h, 100) for h in hostile] + [line("x", 123_456_600)],
        memo='#read("/etc/passwd") *memo*',
        buyer=Buyer(name="#emph[Evil] Corp ]"),
    )
    shown = text(render(inv, seller(name="*Seller* #box[]", footer="#panic()")))
    assert_shows(
        shown,
        *hostile,
        '#read("/etc/passwd") *memo*',
        "#emph[Evil] Corp ]",
        "*Seller* #box[]",
        "#panic()",
    )


# --- the same inputs, the same bytes -----------------------------------------------------------


def test_rendering_is_deterministic() -> None:
    first = render(idr_invoice(), locale="id")
    assert render(idr_invoice(), locale="id") == first
    assert render(idr_invoice(), locale="en") != first
    meta = PdfReader(io.BytesIO(first)).metadata
    assert meta is not None and meta.creation_date is not None
    assert meta.creation_date.replace(tzinfo=UTC) == RENDERED.replace(tzinfo=UTC)


def test_an_invoice_without_buyer_details_shows_the_customer_id() -> None:
    inv = idr_invoice(buyer=None)
    shown = text(render(inv, seller(logo=None, address=None, tax_id=None), locale="en"))
    assert_shows(shown, "cust_42", "Rp 1,370,369", "Amount due")


# --- long invoices paginate --------------------------------------------------------------------


@pytest.mark.parametrize("count", [300])
def test_a_long_invoice_paginates_with_every_line(count: int) -> None:
    # line i: i x $1.01 = i * 101 cents; subtotal 101 * count * (count + 1) / 2 cents
    lines = [
        line(
            f"Project {i:03d} storage",
            i * 101,
            kind="per_unit",
            quantity=Decimal(i),
            unit_price=Decimal("1.01"),
        )
        for i in range(1, count + 1)
    ]
    subtotal = 101 * count * (count + 1) // 2  # 4,560,150 cents = $45,601.50
    assert subtotal == 4_560_150
    inv = invoice("USD", lines, subtotal=subtotal, tax=0, total=subtotal, amount_due=subtotal)
    pdf = render(inv)
    texts = [t.replace("\u00a0", " ") for t in pages(pdf)]
    assert len(texts) > 1
    shown = "\n".join(texts)
    for i in range(1, count + 1):
        cents = i * 101
        assert f"${cents // 100:,}.{cents % 100:02d}" in shown, i
        assert f"Project {i:03d} storage" in shown
    assert "$45,601.50" in shown
    for n, page_text in enumerate(texts, start=1):
        if "storage" in page_text:  # the table's header, repeated on each of its pages
            assert "Description" in page_text
        assert f"Page {n} of {len(texts)}" in page_text

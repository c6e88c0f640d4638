"""The tax report end to end (real ingress, metering and invoicing workers, the real broker
and PostgreSQL): one-off invoices billed with tax rates, a credit note, a void, an invoice
from before tax breakdowns, and another tenant's invoice; the report read over HTTP (JSON
and CSV) and by ``billstream tax report``. Every amount computed by hand."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.tax_report import TaxReportRow
from storage.invoicing.models import Invoice
from storage.invoicing.taxes import TaxRateRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.test_cli import billstream
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.invoicing.tax_report import COLUMNS
from workers.metering.app import build as build_metering
from workers.settings import Settings

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"invoicing_tick_s": 0.1})
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        yield st


async def add_rate(sessions: Sessions, tenant: str, id: str, name: str, pct: str, country: str,
                   **kw: Any) -> None:  # fmt: skip
    values = {
        "id": id, "name": name, "display_name": kw.pop("display", name.upper()),
        "description": None, "percentage": pct, "inclusive": False, "country": country,
        "jurisdiction": kw.pop("jurisdiction", None),
        "taxable_base_factor": kw.pop("factor", "1"), "effective_from": None,
        "effective_until": None,
    }  # fmt: skip
    async with sessions() as session, session.begin():
        await TaxRateRepository(session).upsert(tenant, values, datetime.now(UTC))


async def one_off(api: Client, customer: str, *lines: dict[str, Any]) -> dict[str, Any]:
    """A one-off invoice, finalized at once (docs/one-off-invoices.md)."""
    body = {"customer": customer, "lines": list(lines), "finalize": True}
    result = await api.ok("POST", "/v1/invoices", body)

    async def final() -> dict[str, Any] | None:
        inv: dict[str, Any] = await api.get(f"/v1/invoices/{result['invoice_id']}")
        return inv if inv["status"] != "draft" else None

    invoice: dict[str, Any] = await wait_for(final, timeout_s=20)
    return invoice


def item(description: str, unit_price: str, *rates: str) -> dict[str, Any]:
    line = {"description": description, "quantity": "1", "unit_price": unit_price}
    return line | ({"tax_rates": list(rates)} if rates else {})


async def report(api: Client, start: datetime, end: datetime, fmt: str = "json") -> httpx.Response:
    params = {"from": start.isoformat(), "to": end.isoformat(), "format": fmt}
    return await api.http.get("/v1/tax/report", params=params, headers=api.auth)


def brief(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["document_type"], row["number"], row["status"], row["rate_name"],
            row["percentage"], row["tax_status"], row["taxable_amount"], row["taxable_base"],
            row["tax"], row["tax_major"])  # fmt: skip


async def test_the_report_lists_each_document_and_rate_of_the_period_and_adds_them_up(
    billing: Stack, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    st, api = billing, billing.api
    me = tenant.tenant_id
    await add_rate(sessions, me, "ppn-2025", "ppn", "12", "ID", display="PPN", factor="11/12")
    await add_rate(sessions, me, "vat-de-19", "vat-de", "19", "DE", display="MwSt")
    await add_rate(sessions, me, "gst", "gst", "5", "CA")
    await add_rate(sessions, me, "pst-bc", "pst-bc", "7", "CA", jurisdiction="CA-BC")
    npwp = {"type": "id_npwp", "value": "0123.4567.8901.2345"}
    jakarta = {"line1": "Jl. Sudirman 1", "city": "Jakarta", "country": "ID"}
    customers = [
        {"external_id": "warung", "name": "Warung", "currency": "IDR", "tax_ids": [npwp],
         "billing_address": jakarta},
        {"external_id": "acme-fr", "name": "Acme SARL", "currency": "EUR",
         "tax_status": "reverse_charge",
         "tax_ids": [{"type": "eu_vat", "value": "FR40303265045"}]},
        {"external_id": "bc", "name": "BC Ltd", "currency": "CAD"},
        {"external_id": "hans", "name": "Hans", "currency": "EUR", "tax_rate": "0.19"},
    ]  # fmt: skip
    for c in customers:
        await api.ok("POST", "/v1/customers", c)

    start = datetime.now(UTC) - timedelta(minutes=5)
    # Rp 1,000,000 = 100,000,000 sen: DPP 11/12 = 91,666,666.67 -> 91,666,667; PPN 12 % of
    # it = 11,000,000.04 -> 11,000,000
    warung = await one_off(api, "warung", item("Catering", "1000000", "ppn"))
    # EUR 100.00 to a reverse-charge buyer: the rate at 0
    acme = await one_off(api, "acme-fr", item("Consulting", "100.00", "vat-de"))
    # CAD 100.00 with GST 5 % and PST 7 %: 500 + 700
    bc = await one_off(api, "bc", item("Consulting", "100.00", "gst", "pst-bc"))
    # EUR 100.00 at the customer's bare 19 %: 1,900; then made to look like an invoice from
    # before breakdowns and buyers (empty breakdown, no buyer): the report still lists it
    hans = await one_off(api, "hans", item("Repair", "100.00"))
    assert (warung["tax"], acme["tax"], bc["tax"], hans["tax"]) == (11_000_000, 0, 1_200, 1_900)
    async with sessions() as session, session.begin():
        await session.execute(
            update(Invoice)
            .where(Invoice.id == hans["invoice_id"])
            .values(tax_breakdown=[], buyer=None)
            .execution_options(synchronize_session=False)
        )

    # half of BC's line credited: CAD 50.00, GST 250, PST 350, reported negative
    half = {"reason": "order_change", "lines": [{"line": 0, "amount": 5_000}]}
    note = await api.ok("POST", f"/v1/invoices/{bc['invoice_id']}/credit-notes", half)
    cn = await api.get(f"/v1/credit-notes/{note['credit_note_id']}")
    assert cn["tax"] == 600
    # Acme's invoice voided: listed (status void) and reversed on the day it was voided
    await api.ok("POST", f"/v1/invoices/{acme['invoice_id']}/void", {"reason": "issued twice"})

    # another tenant's invoice in the same period never shows
    other = await make_tenant(sessions, "globex")
    await add_rate(sessions, "globex", "vat-de-19", "vat-de", "19", "DE")
    globex = Client(st.http, other)
    await globex.ok("POST", "/v1/customers", {"external_id": "hans", "name": "Globex Hans",
                                              "currency": "EUR"})  # fmt: skip
    theirs = await one_off(globex, "hans", item("Widget", "10.00", "vat-de"))
    assert theirs["tax"] == 190
    end = datetime.now(UTC) + timedelta(minutes=5)

    r = await report(api, start, end)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    rows = body["rows"]
    for row in rows:
        TaxReportRow.model_validate(row)
    w, a, b, h = (i["number"] for i in (warung, acme, bc, hans))
    assert [brief(r) for r in rows] == [
        ("invoice", w, "finalized", "ppn", "12", "taxable", 100_000_000, 91_666_667, 11_000_000,
         "110000.00"),
        ("invoice", a, "void", "vat-de", "19", "reverse_charge", 10_000, 10_000, 0, "0.00"),
        ("invoice", b, "finalized", "gst", "5", "taxable", 10_000, 10_000, 500, "5.00"),
        ("invoice", b, "finalized", "pst-bc", "7", "taxable", 10_000, 10_000, 700, "7.00"),
        ("invoice", h, "finalized", "tax", "19", "taxable", 10_000, 10_000, 1_900, "19.00"),
        ("credit_note", cn["number"], "issued", "gst", "5", "taxable", -5_000, -5_000, -250,
         "-2.50"),
        ("credit_note", cn["number"], "issued", "pst-bc", "7", "taxable", -5_000, -5_000, -350,
         "-3.50"),
        ("invoice_void", a, "void", "vat-de", "19", "reverse_charge", -10_000, -10_000, 0,
         "0.00"),
    ]  # fmt: skip
    assert [r["date"] for r in rows] == sorted(r["date"] for r in rows)
    first, *_ = rows
    assert (first["buyer_name"], first["buyer_tax_id"], first["buyer_country"]) == (
        "Warung", "id_npwp:0123456789012345", "ID",
    )  # fmt: skip
    assert (first["taxable_base_factor"], first["rate_display_name"], first["currency"]) == (
        "11/12", "PPN", "IDR",
    )  # fmt: skip
    assert rows[1]["buyer_tax_id"] == "eu_vat:FR40303265045"
    assert rows[3]["rate_jurisdiction"] == "CA-BC"
    # the old invoice: its customer as it is now, its legacy rate
    assert (rows[4]["buyer_name"], rows[4]["rate_display_name"], rows[4]["tax_rate_id"]) == (
        "Hans", "Tax 19 %", None,
    )  # fmt: skip
    # a credit note names its invoice and its invoice's buyer
    assert (rows[5]["invoice_number"], rows[5]["buyer_name"]) == (b, "BC Ltd")
    assert "Globex Hans" not in {x["buyer_name"] for x in rows}  # numbers are per tenant

    # totals per currency, rate and tax status: the signed sum of the rows
    totals = [(t["currency"], t["rate_key"], t["tax_status"], t["rows"], t["taxable_amount"],
               t["tax"], t["tax_major"]) for t in body["totals"]]  # fmt: skip
    assert totals == [
        ("CAD", "gst", "taxable", 2, 5_000, 250, "2.50"),  # 500 - 250
        ("CAD", "pst-bc", "taxable", 2, 5_000, 350, "3.50"),  # 700 - 350
        ("EUR", "tax:19", "taxable", 1, 10_000, 1_900, "19.00"),
        ("EUR", "vat-de-19", "reverse_charge", 2, 0, 0, "0.00"),  # voided: 10,000 - 10,000
        ("IDR", "ppn-2025", "taxable", 1, 100_000_000, 11_000_000, "110000.00"),
    ]
    # Σ tax per rate in the totals = Σ of the invoices' breakdowns less the note's
    by_rate: dict[str, int] = {}
    for i in (warung, acme, bc):
        for t in i["tax_breakdown"]:
            by_rate[t["tax_rate_id"]] = by_rate.get(t["tax_rate_id"], 0) + t["tax"]
    for t in cn["tax_breakdown"]:
        by_rate[t["tax_rate_id"]] -= t["tax"]
    by_rate["tax:19"] = hans["tax"]
    assert {t["rate_key"]: t["tax"] for t in body["totals"]} == by_rate

    # CSV: a header, then the same rows
    r = await report(api, start, end, "csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    header, *lines = list(csv.reader(io.StringIO(r.text)))
    assert header == list(COLUMNS)
    as_text = [{k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in row.items()} for row in rows]  # fmt: skip
    assert [dict(zip(header, line, strict=True)) for line in lines] == as_text

    # the other tenant sees its own invoice only
    theirs_report = (await report(globex, start, end)).json()
    assert [(x["number"], x["tax"]) for x in theirs_report["rows"]] == [(theirs["number"], 190)]

    # a period before all this: empty; the CLI writes the same CSV
    empty = (await report(api, start - timedelta(days=30), start)).json()
    assert (empty["rows"], empty["totals"]) == ([], [])
    out = tmp_path / "report.csv"
    code, _, err = await billstream(
        "tax", "report", "--from", start.isoformat(), "--to", end.isoformat(),
        "--tenant", me, "--output", str(out), BILLSTREAM_DATABASE_URL=st.settings.database_url,
    )  # fmt: skip
    assert code == 0, err
    assert f"{len(rows)} row(s) written" in err
    assert out.read_bytes().decode() == r.text  # CRLF kept
    # two tenants: the CLI must be told which
    code, _, err = await billstream(
        "tax", "report", "--from", start.isoformat(), "--to", end.isoformat(), "--format",
        "json", BILLSTREAM_DATABASE_URL=st.settings.database_url,
    )  # fmt: skip
    assert code == 2 and "--tenant" in err, err


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to": "2031-02-01T00:00:00Z"}, "from"),
        ({"from": "2031-01-01T00:00:00Z"}, "to"),
        ({"from": "2031-02-01T00:00:00Z", "to": "2031-02-01T00:00:00Z"}, "to"),
        ({"from": "2031-01-01T00:00:00Z", "to": "2032-01-05T00:00:00Z"}, "to"),
        ({"from": "2031-01-01", "to": "2031-02-01T00:00:00Z"}, "from"),
        ({"from": "2031-01-01T00:00:00", "to": "2031-02-01T00:00:00Z"}, "from"),
        ({"from": "2031-01-01T00:00:00Z", "to": "2031-02-01T00:00:00Z", "format": "xml"},
         "format"),
    ],
)  # fmt: skip
async def test_a_bad_period_or_format_is_422_naming_the_parameter(
    billing: Stack, params: dict[str, str], field: str
) -> None:
    r = await billing.api.http.get("/v1/tax/report", params=params, headers=billing.api.auth)
    assert r.status_code == 422, r.text
    assert field in {e["field"] for e in r.json()["errors"]}, r.text


async def test_a_year_in_local_time_fits_and_pages_stream_in_order(
    billing: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    api = billing.api
    # 2032 is a leap year: 366 days, written from +14:00 to -12:00: 366 days and 26 hours
    leap = {"from": "2032-01-01T00:00:00+14:00", "to": "2033-01-01T00:00:00-12:00"}
    r = await api.http.get("/v1/tax/report", params=leap, headers=api.auth)
    assert r.status_code == 200, r.text
    # more documents than a page (500): invoices inserted straight into a past period
    await api.ok("POST", "/v1/customers", {"external_id": "c", "name": "C", "currency": "JPY"})
    when = datetime(2030, 3, 1, tzinfo=UTC)
    n = 1_203
    async with sessions() as session, session.begin():
        await session.execute(OLD_INVOICES, {"tenant": tenant.tenant_id, "at": when, "n": n})
    r = await report(api, when, when + timedelta(days=1), "csv")
    _, *lines = list(csv.reader(io.StringIO(r.text)))
    numbers = [line[1] for line in lines]
    # each JPY 1,000 at 10 %: 100 tax; every one listed once, in the order they were finalized
    assert numbers == [f"OLD-{i:05d}" for i in range(n)]
    body = (await report(api, when, when + timedelta(days=1))).json()
    (total,) = body["totals"]
    assert (total["rows"], total["taxable_amount"], total["tax"], total["tax_major"]) == (
        n, n * 1_000, n * 100, str(n * 100),
    )  # fmt: skip


#: invoices from before tax breakdowns: a bare 10 % rate, an empty breakdown, no buyer
OLD_INVOICES = text(
    """
    INSERT INTO invoices (id, tenant_id, customer_id, status, kind, number, currency,
        period_start, period_end, proration, subtotal, discount, tax, total, credits,
        amount_paid, tax_rate, rounding, finalize_after, finalized_at, tax_breakdown)
    SELECT 'old-' || lpad(g::text, 5, '0'), c.tenant_id, c.id, 'finalized', 'one_off',
        'OLD-' || lpad(g::text, 5, '0'), 'JPY', t.at, t.at, 1, 1000, 0, 100, 1100, 0, 0,
        0.1, 'half_even', t.at, t.at + make_interval(secs => g / 10.0), '[]'::jsonb
    FROM (SELECT CAST(:at AS timestamptz) AS at) AS t,
        generate_series(0, CAST(:n AS integer) - 1) AS g, customers AS c
    WHERE c.tenant_id = CAST(:tenant AS varchar) AND c.external_id = 'c'
    """
)

"""Taxes end to end over HTTP (real ingress, metering and invoicing workers, the real broker
and PostgreSQL): rates created through the API, named by the tenant, a customer, a plan, a
price or a one-off line, and the invoices they produce, every amount computed by hand.

- Indonesian PPN: 12 % on a DPP of 11/12 of the price; 12 % on the full price for luxury goods;
- EU VAT exclusive and inclusive in EUR, and reverse charge (the rate shown at 0, the note);
- two rates on one line; a rate changing between two periods; JPY (exponent 0) inclusive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from storage.quarantine import QuarantineRow
from tests.integration.support import Sessions
from tests.integration.test_invoicing import Stack
from tests.integration.test_invoicing_late_usage import billing, finalized
from workers.devstack import wait_for

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
JAN = datetime(2032, 1, 1, tzinfo=UTC)
FEB = datetime(2032, 2, 1, tzinfo=UTC)
GRACE = timedelta(hours=2)  # drafts finalize an hour after their period (the default)
__all__ = ["billing"]


def rate(id: str, name: str, pct: str, country: str, **kw: Any) -> dict[str, Any]:
    return {"id": id, "name": name, "display_name": kw.pop("display", name.upper()),
            "percentage": pct, "country": country, **kw}  # fmt: skip


def flat_plan(
    key: str, currency: str, *prices: tuple[str, str, list[str] | None], **kw: Any
) -> dict[str, Any]:
    return {"key": key, "name": key, "currency": currency, "interval": "month", "prices": [
        {"kind": "flat", "key": k, "name": k, "amount": amount}
        | ({"tax_rates": names} if names is not None else {})
        for k, amount, names in prices
    ], **kw}  # fmt: skip


def taxes(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(name, percentage, taxable_amount, taxable_base, tax, taxability) of each entry."""
    return [
        (t["name"], t["percentage"], t["taxable_amount"], t["taxable_base"], t["tax"],
         t["taxability"])
        for t in entries
    ]  # fmt: skip


async def subscribe(st: Stack, who: str, plan: str, start: datetime, **customer: Any) -> None:
    body = {"external_id": who, "name": who.title(), **customer}
    await st.api.ok("POST", "/v1/customers", body)
    sub = {"id": f"s-{who}", "customer": who, "plan": plan, "start": start.isoformat()}
    await st.api.ok("POST", "/v1/subscriptions", sub)


def of(invoices: list[dict[str, Any]], who: str, start: datetime) -> dict[str, Any]:
    iso = start.isoformat().replace("+00:00", "Z")
    (found,) = [i for i in invoices if i["customer"] == who and i["period_start"] == iso]
    assert found["status"] in ("finalized", "paid"), found["status"]
    return found


async def test_ppn_with_a_dpp_of_11_12_and_luxury_goods_at_the_full_rate(billing: Stack) -> None:
    st = billing
    ppn = rate("ppn-2025", "ppn", "12", "ID", display="PPN", taxable_base_factor="11/12")
    await st.api.ok("POST", "/v1/tax_rates", ppn)
    await st.api.ok("POST", "/v1/tax_rates", rate("ppnbm", "ppn-luxury", "12", "ID"))
    await st.api.ok("PUT", "/v1/invoicing/config", {"tax_rates": ["ppn"]})
    plan = flat_plan("resto", "IDR", ("subscription", "1000000", None),
                     ("wine", "500000", ["ppn-luxury"]))  # fmt: skip
    await st.api.ok("POST", "/v1/plans", plan)
    npwp = {"type": "id_npwp", "value": "0123.4567.8901.2345"}
    await subscribe(st, "warung", "resto", OCT, currency="IDR", tax_ids=[npwp])

    inv = of(await finalized(st, NOV + GRACE), "warung", OCT)
    # Rp 1,000,000 = 100,000,000 sen: DPP 100,000,000 x 11/12 = 91,666,666.67 -> 91,666,667,
    # PPN 12 % of it = 11,000,000.04 -> 11,000,000. Wine Rp 500,000 at the full 12 %:
    # 6,000,000. Tax 17,000,000; total 150,000,000 + 17,000,000.
    assert taxes(inv["lines"][0]["taxes"]) == [
        ("ppn", "12", 100_000_000, 91_666_667, 11_000_000, "taxable")
    ]
    assert taxes(inv["lines"][1]["taxes"]) == [
        ("ppn-luxury", "12", 50_000_000, 50_000_000, 6_000_000, "taxable")
    ]
    assert taxes(inv["tax_breakdown"]) == [
        ("ppn", "12", 100_000_000, 91_666_667, 11_000_000, "taxable"),
        ("ppn-luxury", "12", 50_000_000, 50_000_000, 6_000_000, "taxable"),
    ]
    assert inv["tax_breakdown"][0]["taxable_base_factor"] == "11/12"
    assert (inv["subtotal"], inv["tax"], inv["total"]) == (150_000_000, 17_000_000, 167_000_000)
    assert inv["buyer"]["tax_ids"] == [{"type": "id_npwp", "value": "0123456789012345"}]


async def test_eu_vat_exclusive_inclusive_and_reverse_charge(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/tax_rates", rate("vat-de-19", "vat-de", "19", "DE"))
    await st.api.ok("POST", "/v1/tax_rates",
                    rate("vat-de-19-incl", "vat-de-gross", "19", "DE", inclusive=True))  # fmt: skip
    await st.api.ok("POST", "/v1/plans", flat_plan("net", "EUR", ("seat", "100.00", None)))
    gross = flat_plan("gross", "EUR", ("seat", "119.00", None), ("extra", "10.00", None),
                      tax_rates=["vat-de-gross"])  # fmt: skip
    await st.api.ok("POST", "/v1/plans", gross)
    berlin = {"line1": "Unter den Linden 1", "city": "Berlin", "country": "DE"}
    await subscribe(st, "hans", "net", OCT, currency="EUR", tax_rates=["vat-de"],
                    billing_address=berlin)  # fmt: skip
    await subscribe(st, "anna", "gross", OCT, currency="EUR")
    await subscribe(st, "acme", "net", OCT, currency="EUR", tax_rates=["vat-de"],
                    tax_status="reverse_charge",
                    tax_ids=[{"type": "eu_vat", "value": "FR40303265045"}])  # fmt: skip

    invoices = await finalized(st, NOV + GRACE)
    hans, anna, acme = (of(invoices, who, OCT) for who in ("hans", "anna", "acme"))
    # hans: EUR 100.00 + 19 % = 119.00
    assert taxes(hans["tax_breakdown"]) == [("vat-de", "19", 10_000, 10_000, 1_900, "taxable")]
    assert (hans["subtotal"], hans["tax"], hans["tax_inclusive"], hans["total"]) == (
        10_000, 1_900, 0, 11_900,
    )  # fmt: skip
    assert hans["tax_note"] is None
    # anna pays the gross: 119.00 -> 1,900 tax, net 10,000; 10.00 -> 1,000 x 0.19 / 1.19 =
    # 159.66 -> 160, net 840. Invoice rounding: once on 12,900: 12,900 x 0.19 / 1.19 =
    # 2,059.66 -> 2,060, apportioned 1,900.2.. -> 1,900 and 159.8.. -> 160
    assert taxes(anna["tax_breakdown"]) == [
        ("vat-de-gross", "19", 10_840, 10_840, 2_060, "taxable")
    ]
    assert [taxes(ln["taxes"]) for ln in anna["lines"]] == [
        [("vat-de-gross", "19", 10_000, 10_000, 1_900, "taxable")],
        [("vat-de-gross", "19", 840, 840, 160, "taxable")],
    ]
    assert (anna["subtotal"], anna["tax"], anna["tax_inclusive"], anna["total"]) == (
        12_900, 2_060, 2_060, 12_900,
    )  # fmt: skip
    for ln in anna["lines"]:  # net + tax = gross on every line
        (t,) = ln["taxes"]
        assert t["taxable_amount"] + t["tax"] == ln["amount"]
    # acme: reverse charge, the rate shown at 0 with the legal note
    assert taxes(acme["tax_breakdown"]) == [("vat-de", "19", 10_000, 10_000, 0, "reverse_charge")]
    assert (acme["tax"], acme["total"]) == (0, 10_000)
    assert acme["tax_note"] and "Reverse charge" in acme["tax_note"]
    assert acme["buyer"]["tax_status"] == "reverse_charge"
    assert acme["buyer"]["tax_ids"] == [{"type": "eu_vat", "value": "FR40303265045"}]


async def test_a_rate_changing_between_two_periods(billing: Stack) -> None:
    st = billing
    # PPN: 10 % on the full price until 2032, then 12 % on 11/12 of it
    until = {"effective_until": JAN.isoformat()}
    await st.api.ok("POST", "/v1/tax_rates", rate("ppn-old", "ppn", "10", "ID", **until))
    await st.api.ok("POST", "/v1/tax_rates", rate("ppn-new", "ppn", "12", "ID",
                                                  taxable_base_factor="11/12",
                                                  effective_from=JAN.isoformat()))  # fmt: skip
    await st.api.ok("POST", "/v1/plans", flat_plan("p", "IDR", ("base", "1000000", None),
                                                   tax_rates=["ppn"]))  # fmt: skip
    await subscribe(st, "toko", "p", DEC, currency="IDR")
    invoices = await finalized(st, FEB + GRACE)
    december, january = of(invoices, "toko", DEC), of(invoices, "toko", JAN)
    # December: 10 % of 100,000,000 = 10,000,000; January: DPP 91,666,667, 12 % = 11,000,000
    assert taxes(december["tax_breakdown"]) == [
        ("ppn", "10", 100_000_000, 100_000_000, 10_000_000, "taxable")
    ]
    assert december["tax_breakdown"][0]["tax_rate_id"] == "ppn-old"
    assert taxes(january["tax_breakdown"]) == [
        ("ppn", "12", 100_000_000, 91_666_667, 11_000_000, "taxable")
    ]
    assert january["tax_breakdown"][0]["tax_rate_id"] == "ppn-new"
    # the old version was used: it can be closed, never rewritten
    outcome = await st.api.command(
        "POST", "/v1/tax_rates", rate("ppn-old", "ppn", "11", "ID", **until)
    )
    assert outcome["status"] == "failed", outcome


async def one_off(st: Stack, customer: str, *lines: dict[str, Any]) -> dict[str, Any]:
    body = {"customer": customer, "lines": list(lines), "finalize": True}
    result = await st.api.ok("POST", "/v1/invoices", body)

    async def final() -> dict[str, Any] | None:
        inv: dict[str, Any] = await st.api.get(f"/v1/invoices/{result['invoice_id']}")
        return inv if inv["status"] != "draft" else None

    invoice: dict[str, Any] = await wait_for(final, timeout_s=20)
    return invoice


async def test_two_rates_on_one_line_and_jpy_inclusive(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/tax_rates", rate("gst", "gst", "5", "CA"))
    await st.api.ok("POST", "/v1/tax_rates", rate("pst", "pst-bc", "7", "CA", jurisdiction="CA-BC"))
    await st.api.ok("POST", "/v1/tax_rates", rate("jct", "jct", "10", "JP", inclusive=True))
    await st.api.ok("POST", "/v1/customers", {"external_id": "bc", "name": "BC", "currency": "CAD"})
    await st.api.ok("POST", "/v1/customers", {"external_id": "jp", "name": "JP", "currency": "JPY"})
    # CAD 100.00 with GST 5 % and PST 7 % on the same line: 500 + 700; total 11,200
    consulting = {"description": "Consulting", "quantity": "1", "unit_price": "100.00",
                  "tax_rates": ["gst", "pst-bc"]}  # fmt: skip
    two = await one_off(st, "bc", consulting)
    assert taxes(two["lines"][0]["taxes"]) == [
        ("gst", "5", 10_000, 10_000, 500, "taxable"),
        ("pst-bc", "7", 10_000, 10_000, 700, "taxable"),
    ]
    assert (two["tax"], two["total"]) == (1_200, 11_200)
    # JPY inclusive 10 %: 3 x ¥1,000 = ¥3,000: 3,000 x 0.1 / 1.1 = 272.7 -> 273, net 2,727;
    # and ¥1,100: tax 100, net 1,000. Invoice rounding, once on ¥4,100: 372.7 -> 373
    jp = await one_off(
        st, "jp",
        {"description": "Ramen", "quantity": "3", "unit_price": "1000", "tax_rates": ["jct"]},
        {"description": "Gyoza", "quantity": "1", "unit_price": "1100", "tax_rates": ["jct"]},
    )  # fmt: skip
    assert taxes(jp["tax_breakdown"]) == [("jct", "10", 3_727, 3_727, 373, "taxable")]
    assert (jp["subtotal"], jp["tax"], jp["tax_inclusive"], jp["total"]) == (4_100, 373, 373, 4_100)
    for ln in jp["lines"]:
        (t,) = ln["taxes"]
        assert t["taxable_amount"] + t["tax"] == ln["amount"]
    # ¥3,000's share of 373: 373 x 3,000 / 4,100 = 272.9 -> 273 (the larger remainder); ¥1,100: 100
    assert [ln["taxes"][0]["tax"] for ln in jp["lines"]] == [273, 100]


async def test_a_rate_in_force_nowhere_in_the_period_quarantines_that_subscription_only(
    billing: Stack, sessions: Sessions
) -> None:
    st = billing
    ended = rate("vat-old", "vat-old", "19", "DE", effective_until=OCT.isoformat())
    await st.api.ok("POST", "/v1/tax_rates", ended)
    await st.api.ok("POST", "/v1/plans", flat_plan("p", "EUR", ("base", "10.00", None)))
    await subscribe(st, "stale", "p", OCT, currency="EUR", tax_rates=["vat-old"])
    await subscribe(st, "fine", "p", OCT, currency="EUR", tax_rate="0.1")

    invoices = await finalized(st, NOV + GRACE)
    # fine is billed (10.00 + 10 %); stale is never billed without its tax
    assert [(i["customer"], i["total"]) for i in invoices] == [("fine", 1_100)]
    async with sessions() as session:
        [q] = list(await session.scalars(select(QuarantineRow)))
    assert (q.job, q.kind, q.item_id) == ("invoicing.close_periods", "subscription", "s-stale")
    assert "'vat-old' is in force at no time" in q.reason


async def test_a_top_up_bought_before_tax_pays_the_customers_rates(billing: Stack) -> None:
    st = billing
    await st.api.ok("PUT", "/v1/invoicing/config", {"credits_apply": "before_tax"})
    await st.api.ok("POST", "/v1/tax_rates", rate("vat-19", "vat", "19", "DE"))
    body = {"external_id": "kai", "name": "Kai", "currency": "EUR", "tax_rates": ["vat"]}
    await st.api.ok("POST", "/v1/customers", body)
    top_up = {"id": "t1", "amount": 10_000, "purchase_amount": 9_000}
    result = await st.api.ok("POST", "/v1/customers/kai/credits/top-ups", top_up)
    invoice = await st.api.get(f"/v1/invoices/{result['invoice_id']}")
    # before tax, buying credit is taxed: 9,000 x 19 % = 1,710
    assert taxes(invoice["tax_breakdown"]) == [("vat", "19", 9_000, 9_000, 1_710, "taxable")]
    assert (invoice["tax"], invoice["total"]) == (1_710, 10_710)
    assert (await st.api.get("/v1/tax_rates/vat-19"))["used"] is True


async def test_line_rounding_rounds_each_line(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/tax_rates", rate("jct", "jct", "10", "JP", inclusive=True))
    await st.api.ok("POST", "/v1/customers", {"external_id": "jp", "name": "JP", "currency": "JPY"})
    three = [{"description": f"Onigiri {k}", "quantity": "1", "unit_price": "333",
              "tax_rates": ["jct"]} for k in range(3)]  # fmt: skip
    # invoice rounding: 999 x 0.1 / 1.1 = 90.8 -> 91, apportioned 31 + 30 + 30
    by_invoice = await one_off(st, "jp", *three)
    assert [ln["taxes"][0]["tax"] for ln in by_invoice["lines"]] == [31, 30, 30]
    assert (by_invoice["tax"], by_invoice["total"]) == (91, 999)
    # line rounding: 333 x 0.1 / 1.1 = 30.27 -> 30 on each line, 90
    config = await st.api.get("/v1/invoicing/config")
    await st.api.ok("PUT", "/v1/invoicing/config", config | {"tax_rounding": "line"})
    by_line = await one_off(st, "jp", *three)
    assert [ln["taxes"][0]["tax"] for ln in by_line["lines"]] == [30, 30, 30]
    assert (by_line["tax"], by_line["tax_inclusive"], by_line["total"]) == (90, 90, 999)
    assert by_line["tax_breakdown"][0]["taxable_amount"] == 909  # 999 - 90


async def test_a_one_off_line_whose_rate_is_not_in_force_is_refused_whole(billing: Stack) -> None:
    st = billing
    march = datetime(2031, 3, 1, tzinfo=UTC)
    vat = rate("vat-2031", "vat", "19", "DE", effective_from=march.isoformat())
    await st.api.ok("POST", "/v1/tax_rates", vat)
    await st.api.ok("POST", "/v1/customers", {"external_id": "e", "name": "E", "currency": "EUR"})
    february = {"description": "Stay", "quantity": "1", "unit_price": "80.00",
                "tax_rates": ["vat"], "period_start": "2031-02-01T00:00:00Z",
                "period_end": "2031-02-02T00:00:00Z"}  # fmt: skip
    outcome = await st.api.command(
        "POST", "/v1/invoices", {"customer": "e", "lines": [february], "finalize": True}
    )
    assert outcome["status"] == "failed", outcome
    assert (outcome["error"]["code"], outcome["error"]["field"]) == (
        "tax_rate_not_in_force", "lines[0].tax_rates",
    )  # fmt: skip
    assert "'vat' is in force at no time" in outcome["error"]["message"]
    assert await st.invoices(customer="e") == []  # nothing written

"""Consolidated invoices end to end over HTTP (docs/hierarchies.md): real ingress, metering
and invoicing workers, the real broker and PostgreSQL. Customers invoiced to a parent have
no invoices of their own: their usage is billed on their payer's subscription invoice, a
section per customer, priced on that customer's usage alone; late usage of a section lands in
that section on the payer's next invoice. Amounts are computed by hand below."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import TenantKey
from tests.integration.test_invoicing import Stack, stack, usage_event
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
OCTOBER = "2031-10-01T00:00Z/2031-11-01T00:00Z"

METERS = [
    {"key": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
    {"key": "calls", "event_type": "api.call", "aggregation": "count"},
]
TEAM = {
    "key": "team",
    "name": "Team",
    "currency": "USD",
    "interval": "month",
    "prices": [
        {"kind": "flat", "key": "base", "name": "Team plan", "amount": "100.00"},
        {"kind": "per_unit", "key": "tokens", "name": "Tokens", "meter": "tokens",
         "unit_price": "0.05", "included_quantity": "100"},
        {"kind": "graduated", "key": "calls", "name": "API calls", "meter": "calls",
         "tiers": [{"up_to": "10", "unit_price": "0.50"}, {"up_to": None, "unit_price": "0.10"}]},
    ],
}  # fmt: skip
HQ = {"external_id": "hq", "name": "Travel HQ", "currency": "USD", "tax_rate": "0.1"}


def child(
    external_id: str, parent: str = "hq", currency: str = "USD", **more: Any
) -> dict[str, Any]:
    return {"external_id": external_id, "name": external_id, "currency": currency,
            "parent": parent, "invoice_to": "parent", **more}  # fmt: skip


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"invoicing_tick_s": 0.1, "late_usage_lookback_days": 70})
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        for meter in METERS:
            await st.api.ok("POST", "/v1/meters", meter)
        await st.api.ok("POST", "/v1/plans", TEAM)
        await st.api.ok("POST", "/v1/customers", HQ)
        sub = {"customer": "hq", "plan": "team", "start": OCT.isoformat(), "id": "s-hq"}
        await st.api.ok("POST", "/v1/subscriptions", sub)
        yield st


async def run(st: Stack, as_of: datetime, run_id: str) -> dict[str, Any]:
    """A billing run with this id (a command re-sent with the same id is the same run)."""
    await st.api.ok("POST", "/v1/billing-runs", {"id": run_id, "as_of": as_of.isoformat()})

    async def completed() -> dict[str, Any] | None:
        r = await st.api.http.get(f"/v1/billing-runs/{run_id}", headers=st.api.auth)
        body: dict[str, Any] | None = r.json() if r.status_code == 200 else None
        return body if body is not None and body["status"] == "completed" else None

    done: dict[str, Any] = await wait_for(completed, timeout_s=30)
    return done


async def billed(st: Stack, as_of: datetime, name: str) -> list[dict[str, Any]]:
    """Runs as of ``as_of`` (``name``-1, -2, …) until no draft waits for metering; every
    invoice then."""
    runs = 0

    async def done() -> list[dict[str, Any]] | None:
        nonlocal runs
        runs += 1
        result = await run(st, as_of, f"{name}-{runs}")
        return None if result["drafts_waiting"] else await st.invoices()

    invoices: list[dict[str, Any]] = await wait_for(done, timeout_s=30)
    return invoices


def shown(invoice: dict[str, Any]) -> list[tuple[str, str | None, str, int]]:
    return [
        (ln["price_key"], ln["subject"], ln["quantity"], ln["amount"]) for ln in invoice["lines"]
    ]


def sections(invoice: dict[str, Any]) -> dict[str | None, int]:
    """The amount of each part of the invoice by subject (None: the flat fees)."""
    out: dict[str | None, int] = {}
    for ln in invoice["lines"]:
        out[ln["subject"]] = out.get(ln["subject"], 0) + ln["amount"]
    return out


async def test_a_consolidated_invoice_with_three_children_in_two_currencies_refused_then_accepted(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok("POST", "/v1/customers", child("agency-a"))
    await st.api.ok("POST", "/v1/customers", child("agency-b"))
    # agency-a's own desk, invoiced to agency-a, which is invoiced to hq: hq pays for it
    await st.api.ok("POST", "/v1/customers", child("desk-a1", parent="agency-a"))

    # agency-c exists on its own in EUR; billing it on hq's (USD) invoices is refused
    agency_c = {"external_id": "agency-c", "name": "agency-c", "currency": "EUR"}
    await st.api.ok("POST", "/v1/customers", agency_c)
    before = await st.api.get("/v1/customers/agency-c")
    outcome = await st.api.command("POST", "/v1/customers", child("agency-c", currency="EUR"))
    assert outcome["status"] == "failed"
    assert (outcome["error"]["code"], outcome["error"]["field"]) == ("conflict", "currency")
    assert "USD" in outcome["error"]["message"]
    after = await st.api.get("/v1/customers/agency-c")
    assert after == before  # nothing changed
    assert (after["currency"], after["parent"], after["invoice_to"]) == ("EUR", None, "self")

    # in USD it is accepted
    await st.api.ok("POST", "/v1/customers", child("agency-c"))
    now = await st.api.get("/v1/customers/agency-c")
    assert (now["currency"], now["parent"], now["invoice_to"]) == ("USD", "hq", "parent")

    # a customer below hq invoiced to itself has its own subscription and invoice
    store = {"external_id": "store-d", "name": "Store D", "currency": "USD", "parent": "hq"}
    await st.api.ok("POST", "/v1/customers", store)
    sub = {"customer": "store-d", "plan": "team", "start": OCT.isoformat(), "id": "s-store-d"}
    await st.api.ok("POST", "/v1/subscriptions", sub)
    # a customer invoiced to its parent has no subscription of its own
    refused = await st.api.command(
        "POST", "/v1/subscriptions", {"customer": "agency-a", "plan": "team", "id": "s-a"}
    )
    assert (refused["status"], refused["error"]["field"]) == ("failed", "customer")

    # October's usage, through the ingress
    tokens = {"hq": [600, 400], "agency-a": [150], "desk-a1": [40], "agency-b": [300, 30],
              "store-d": [200]}  # fmt: skip
    calls = {"hq": 14, "agency-a": 3, "desk-a1": 12, "agency-c": 1}
    events = [
        usage_event(f"t-{who}-{i}", who, OCT + timedelta(days=2 + i, minutes=7), "llm", tokens=n)
        for who, ns in tokens.items()
        for i, n in enumerate(ns)
    ]
    events += [
        usage_event(f"c-{who}-{i}", who, OCT + timedelta(hours=3 + i), "api.call")
        for who, n in calls.items()
        for i in range(n)
    ]
    # November's (not on October's invoice)
    events.append(usage_event("t-late-nov", "agency-b", NOV + HOUR / 2, "llm", tokens=9_999))
    await st.send_usage(events)
    for who, ns in tokens.items():
        await st.wait_usage("tokens", who, OCT, NOV, Decimal(sum(ns)))
    for who, n in calls.items():
        await st.wait_usage("calls", who, OCT, NOV, Decimal(n))

    invoices = await billed(st, NOV + HOUR, "run-oct")
    assert sorted(i["customer"] for i in invoices) == ["hq", "store-d"]
    for who in ("agency-a", "agency-b", "agency-c", "desk-a1"):
        assert await st.invoices(customer=who) == []

    [hq] = await st.invoices(customer="hq")
    hq = await st.api.get(f"/v1/invoices/{hq['invoice_id']}")
    assert (hq["status"], hq["subscription_id"], hq["currency"]) == ("finalized", "s-hq", "USD")
    assert shown(hq) == [
        ("base", None, "1", 100_00),  # the flat fee, once
        ("tokens", "hq", "1000", 45_00),  # (1000 - 100 included) x 0.05
        ("calls", "hq", "14", 5_40),  # 10 x 0.50 + 4 x 0.10
        # the sections, by external id, each priced on its own usage alone
        ("tokens", "agency-a", "150", 2_50),  # (150 - 100) x 0.05
        ("calls", "agency-a", "3", 1_50),  # 3 x 0.50: its own first tier
        ("tokens", "agency-b", "330", 11_50),  # (330 - 100) x 0.05
        ("calls", "agency-b", "0", 0),
        ("tokens", "agency-c", "0", 0),
        ("calls", "agency-c", "1", 50),
        ("tokens", "desk-a1", "40", 0),  # within its own 100 included
        ("calls", "desk-a1", "12", 5_20),  # 10 x 0.50 + 2 x 0.10
    ]
    assert sections(hq) == {
        None: 100_00, "hq": 50_40, "agency-a": 4_00, "agency-b": 11_50, "agency-c": 50,
        "desk-a1": 5_20,
    }  # fmt: skip
    # 171.60, taxed by hq's 10 %: 17.16
    assert (hq["subtotal"], hq["tax"], hq["total"]) == (171_60, 17_16, 188_76)
    assert hq["amount_due"] == 188_76

    [store_d] = await st.invoices(customer="store-d")
    assert shown(store_d) == [
        ("base", None, "1", 100_00),
        ("tokens", "store-d", "200", 5_00),  # (200 - 100) x 0.05
        ("calls", "store-d", "0", 0),
    ]
    assert (store_d["subtotal"], store_d["tax"], store_d["total"]) == (105_00, 0, 105_00)

    # the run's command re-sent, and a new run as of the same time: no second invoice
    await run(st, NOV + HOUR, "run-oct-1")
    fresh = await run(st, NOV + HOUR, "run-oct-again")
    assert (fresh["invoices_created"], fresh["invoices_finalized"]) == (0, 0)
    assert [(i["invoice_id"], i["number"], i["total"]) for i in await st.invoices()] == [
        (i["invoice_id"], i["number"], i["total"]) for i in invoices
    ]


async def test_late_usage_of_a_child_is_an_adjustment_line_in_its_section(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/customers", child("agency-a"))
    await st.send_usage([
        usage_event("h1", "hq", OCT + HOUR, "llm", tokens=1000),
        usage_event("a1", "agency-a", OCT + HOUR, "llm", tokens=150),
    ])  # fmt: skip
    await st.wait_usage("tokens", "hq", OCT, NOV, Decimal(1000))
    await st.wait_usage("tokens", "agency-a", OCT, NOV, Decimal(150))

    [october] = await billed(st, NOV + HOUR, "run-oct")
    assert sections(october) == {None: 100_00, "hq": 45_00, "agency-a": 2_50}
    assert october["total"] == 162_25  # 147.50 + 10 % tax 14.75

    # late October usage of agency-a and of hq, after October was invoiced
    await st.send_usage([
        usage_event("a2", "agency-a", OCT + timedelta(days=20), "llm", tokens=60),
        usage_event("h2", "hq", OCT + timedelta(days=21), "llm", tokens=100),
    ])  # fmt: skip
    await st.wait_usage("tokens", "agency-a", OCT, NOV, Decimal(210))
    await st.wait_usage("tokens", "hq", OCT, NOV, Decimal(1100))

    invoices = await billed(st, DEC + HOUR, "run-nov")
    assert sorted(i["customer"] for i in invoices) == ["hq", "hq"]  # agency-a: none, ever
    [november] = [i for i in invoices if i["period_start"].startswith("2031-11")]
    adjustments = [ln for ln in november["lines"] if ln["adjustment_for"]]
    # each in its own part: hq 1100 -> 50.00, billed 45.00: +5.00 for +100;
    # agency-a 210 -> (210 - 100) x 0.05 = 5.50, billed 2.50: +3.00 for +60
    assert [
        (ln["price_key"], ln["subject"], ln["adjustment_for"], ln["quantity"], ln["amount"])
        for ln in adjustments
    ] == [
        ("tokens", "hq", OCTOBER, "100", 5_00),
        ("tokens", "agency-a", OCTOBER, "60", 3_00),
    ]
    # November: the flat fee, no usage of either, and the two adjustments
    assert (november["subtotal"], november["tax"], november["total"]) == (108_00, 10_80, 118_80)
    [oct_again] = [i for i in invoices if i["period_start"].startswith("2031-10")]
    assert (oct_again["invoice_id"], oct_again["total"]) == (october["invoice_id"], 162_25)


async def test_the_sections_are_read_again_when_the_draft_is_finalized(billing: Stack) -> None:
    st = billing
    # drafts wait 24 h before they finalize
    await st.api.ok("PUT", "/v1/invoicing/config", {"grace_period_hours": 24})
    await st.api.ok("POST", "/v1/customers", child("agency-a"))
    await st.api.ok("POST", "/v1/customers", {"external_id": "agency-b", "name": "agency-b",
                                              "currency": "USD"})  # fmt: skip
    await st.send_usage([
        usage_event("a1", "agency-a", OCT + HOUR, "llm", tokens=300),
        usage_event("b1", "agency-b", OCT + HOUR, "llm", tokens=500),
    ])  # fmt: skip
    await st.wait_usage("tokens", "agency-a", OCT, NOV, Decimal(300))
    await st.wait_usage("tokens", "agency-b", OCT, NOV, Decimal(500))

    [draft] = await billed(st, NOV + HOUR, "run-close")
    assert draft["status"] == "draft"
    # agency-a's section: (300 - 100) x 0.05 = 10.00; agency-b is invoiced on its own
    assert sections(draft) == {None: 100_00, "hq": 0, "agency-a": 10_00}

    # before it finalizes, agency-b is billed on hq's invoices too: its section is added
    await st.api.ok("POST", "/v1/customers", child("agency-b"))
    invoices = await billed(st, NOV + 25 * HOUR, "run-finalize")
    [october] = [i for i in invoices if i["customer"] == "hq"]
    assert (october["invoice_id"], october["status"]) == (draft["invoice_id"], "finalized")
    # agency-b: (500 - 100) x 0.05 = 20.00
    assert sections(october) == {None: 100_00, "hq": 0, "agency-a": 10_00, "agency-b": 20_00}
    assert (october["subtotal"], october["tax"], october["total"]) == (130_00, 13_00, 143_00)
    assert await st.invoices(customer="agency-b") == []

"""Prepaid credits end to end over HTTP: real ingress, metering and invoicing workers, the
real broker and PostgreSQL. Every amount is computed by hand in the test (docs/credits.md
has the same worked examples). Periods are in 2031 so the scheduler's own runs (as of now)
never touch them; credit grants start in 2031 too."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas import topics
from schemas.payments import PaymentData, PaymentSucceeded
from tests.conftest import TenantKey
from tests.integration.support import producer, read_topic
from tests.integration.test_invoicing import Stack, stack, usage_event
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.invoicing.credit_jobs import CreditJobs
from workers.metering.app import build as build_metering
from workers.runtime.database import database
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

METER = {"key": "calls", "event_type": "api.call", "aggregation": "count"}


def plan(key: str, currency: str, flat: str, unit: str = "0") -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "currency": currency,
        "interval": "month",
        "prices": [
            {"kind": "flat", "key": "base", "name": "Base fee", "amount": flat},
            {"kind": "per_unit", "key": "calls", "name": "Calls", "meter": "calls",
             "unit_price": unit},
        ],
    }  # fmt: skip


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"invoicing_tick_s": 0.1})
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        await st.api.ok("POST", "/v1/meters", METER)
        yield st


async def customer(st: Stack, id: str, currency: str, tax_rate: str | None = None) -> None:
    body: dict[str, Any] = {"external_id": id, "name": id, "currency": currency}
    if tax_rate:
        body["tax_rate"] = tax_rate
    await st.api.ok("POST", "/v1/customers", body)


async def grant(st: Stack, who: str, **body: Any) -> dict[str, Any]:
    r = await st.api.send("POST", f"/v1/customers/{who}/credits/grants", body)
    assert r.status_code == 202, r.text
    outcome = await st.api.outcome(r.json()["command_id"])
    assert outcome["status"] == "succeeded", outcome
    return r.json() | {"result": outcome["result"]}


async def pay(st: Stack, invoice_id: str, who: str, amount: int) -> None:
    """The payment event the payments worker would emit (it is not running here)."""
    event = PaymentSucceeded(
        source="tests",
        tenantid=st.api.key.tenant_id,
        data=PaymentData(
            payment_id=f"pay-{invoice_id}", invoice_id=invoice_id, customer=who, amount=amount,
            currency="USD", method="offline",
        ),
    )  # fmt: skip
    async with producer(st.settings) as p:
        await p.send_and_wait(topics.EVENTS_PAYMENTS, event.to_json(), key=who.encode())


async def invoice_of(st: Stack, sub: str) -> dict[str, Any]:
    [row] = await st.invoices(subscription_id=sub)
    body: dict[str, Any] = await st.api.get(f"/v1/invoices/{row['invoice_id']}")
    return body


async def test_credits_pay_an_invoice_after_tax_in_the_documented_order(billing: Stack) -> None:
    st = billing
    await customer(st, "warung", "USD", tax_rate="0.1")
    await st.api.ok("POST", "/v1/plans", plan("basic", "USD", "100.00"))
    # priority first (0 before 50), then the earliest expiry, then the oldest
    await grant(st, "warung", id="promo", amount=3000, effective_at=OCT.isoformat())
    await grant(
        st, "warung", id="soon", amount=2000, effective_at=OCT.isoformat(),
        expires_at=(DEC + timedelta(days=5)).isoformat(),
    )  # fmt: skip
    await grant(st, "warung", id="first", amount=1000, priority=0, effective_at=OCT.isoformat())
    sub = await st.api.ok(
        "POST",
        "/v1/subscriptions",
        {"customer": "warung", "plan": "basic", "start": OCT.isoformat()},
    )
    await st.run_billing(NOV + HOUR)
    inv = await invoice_of(st, sub["subscription_id"])
    # 100.00 + 10 % tax = 110.00; first 10.00, soon 20.00, promo 30.00 -> 50.00 due
    credit_lines = [ln for ln in inv["lines"] if ln["kind"] == "credit"]
    assert [(ln["grant_id"], ln["amount"]) for ln in credit_lines] == [
        ("first", -1000), ("soon", -2000), ("promo", -3000),
    ]  # fmt: skip
    assert (inv["subtotal"], inv["tax"], inv["credits"], inv["total"], inv["amount_due"]) == (
        10000, 1000, 6000, 5000, 5000,
    )  # fmt: skip
    assert sum(ln["amount"] for ln in inv["lines"]) + inv["tax"] == inv["total"]

    later = (NOV + 2 * HOUR).isoformat()
    credits = await st.api.get("/v1/customers/warung/credits", as_of=later)
    assert credits["balance"] == 0
    assert {g["grant_id"]: (g["balance"], g["status"]) for g in credits["grants"]} == {
        "first": (0, "depleted"), "soon": (0, "depleted"), "promo": (0, "depleted"),
    }  # fmt: skip

    # voiding the invoice returns its credits
    r = await st.api.command("POST", f"/v1/invoices/{inv['invoice_id']}/void", {})
    assert r["status"] == "succeeded", r
    credits = await st.api.get("/v1/customers/warung/credits", as_of=later)
    assert credits["balance"] == 6000
    ledger = await st.api.get("/v1/customers/warung/credits/ledger")
    assert sorted((e["kind"], e["grant_id"], e["amount"]) for e in ledger) == sorted([
        ("granted", "promo", 3000), ("granted", "soon", 2000), ("granted", "first", 1000),
        ("applied", "first", -1000), ("applied", "soon", -2000), ("applied", "promo", -3000),
        ("reversed", "first", 1000), ("reversed", "soon", 2000), ("reversed", "promo", 3000),
    ])  # fmt: skip

    # customer, plan, subscription; invoice created, finalized, voided; 3 x 3 credit events
    records = await read_topic(st.settings, topics.EVENTS_INVOICING, 15)
    types = [json.loads(r.value)["type"] for r in records]
    assert types.count("credit.granted") == 3
    assert types.count("credit.applied") == 3
    assert types.count("credit.reversed") == 3


async def test_credits_before_tax_reduce_the_taxable_amount(billing: Stack) -> None:
    st = billing
    r = await st.api.command("PUT", "/v1/invoicing/config", {"credits_apply": "before_tax"})
    assert r["status"] == "succeeded", r
    await customer(st, "kopi", "IDR", tax_rate="0.11")
    await st.api.ok("POST", "/v1/plans", plan("kopi", "IDR", "150000"))
    await grant(st, "kopi", id="g1", amount=5_000_000, effective_at=OCT.isoformat())
    sub = await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "kopi", "plan": "kopi", "start": OCT.isoformat()}
    )
    await st.run_billing(NOV + HOUR)
    inv = await invoice_of(st, sub["subscription_id"])
    # IDR has exponent 2: Rp 150,000.00 - Rp 50,000.00 = Rp 100,000.00 taxable; 11 % of it
    # is Rp 11,000.00; the total Rp 111,000.00
    assert (inv["subtotal"], inv["credits"], inv["tax"], inv["total"]) == (
        15_000_000, 5_000_000, 1_100_000, 11_100_000,
    )  # fmt: skip


async def test_bad_grants_are_refused_at_the_door(billing: Stack) -> None:
    st = billing
    await customer(st, "ana", "EUR")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": 100, "currency": "USD"}, "currency"),
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 10.5}, "amount"),
        ({"amount": 999.99}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "100"}, "amount"),
        ({"amount": 100, "effective_at": NOV.isoformat(), "expires_at": OCT.isoformat()},
         "expires_at"),
        ({"amount": 100, "rollover": {"expires_after_days": 30}}, "rollover"),
        ({"amount": 100, "scope": {"prices": []}}, "scope"),
        ({"amount": 100, "priority": 101}, "priority"),
    ]  # fmt: skip
    for body, field in cases:
        r = await st.api.send("POST", "/v1/customers/ana/credits/grants", body)
        assert r.status_code == 422, (body, r.text)
        assert any(field in e["field"] for e in r.json()["errors"]), (body, r.text)
    r = await st.api.send("POST", "/v1/customers/nobody/credits/grants", {"amount": 100})
    assert r.status_code == 404, r.text
    assert (await st.api.get("/v1/customers/ana/credits"))["grants"] == []


async def test_a_grant_applied_to_an_invoice_cannot_be_voided_and_expiry_takes_the_rest(
    billing: Stack,
) -> None:
    st = billing
    await customer(st, "bo", "JPY")
    await st.api.ok("POST", "/v1/plans", plan("jp", "JPY", "1000"))
    await grant(
        st, "bo", id="g", amount=1500, effective_at=OCT.isoformat(),
        expires_at=(NOV + 2 * HOUR).isoformat(),
    )  # fmt: skip
    sub = await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "bo", "plan": "jp", "start": OCT.isoformat()}
    )
    await st.run_billing(NOV + HOUR)
    inv = await invoice_of(st, sub["subscription_id"])
    assert (inv["credits"], inv["total"], inv["status"]) == (1000, 0, "paid")

    r = await st.api.command("POST", "/v1/credit-grants/g/void", {"reason": "test"})
    assert r["status"] == "failed" and "void those invoices first" in json.dumps(r), r

    # what is left (500) expires at exactly expires_at: balances as of either side of it
    as_of = (NOV + 3 * HOUR).isoformat()
    before = await st.api.get("/v1/customers/bo/credits", as_of=(NOV + HOUR).isoformat())
    assert before["balance"] == 500
    after = await st.api.get("/v1/customers/bo/credits", as_of=as_of)
    assert after["balance"] == 0
    assert after["grants"][0]["status"] == "expired"


async def test_a_top_up_is_invoiced_and_granted_when_paid(billing: Stack) -> None:
    st = billing
    await customer(st, "cafe", "USD", tax_rate="0.1")
    r = await st.api.send(
        "POST",
        "/v1/customers/cafe/credits/top-ups",
        {"id": "t1", "amount": 10000, "purchase_amount": 9000},
    )
    assert r.status_code == 202, r.text
    outcome = await st.api.outcome(r.json()["command_id"])
    assert outcome["status"] == "succeeded", outcome
    invoice_id = outcome["result"]["invoice_id"]
    inv = await st.api.get(f"/v1/invoices/{invoice_id}")
    # after tax (the default): buying credit carries no tax
    assert (inv["status"], inv["subscription_id"], inv["total"], inv["amount_due"]) == (
        "finalized", None, 9000, 9000,
    )  # fmt: skip
    credits = await st.api.get("/v1/customers/cafe/credits")
    assert (credits["balance"], credits["grants"][0]["status"]) == (0, "pending")

    async def settled() -> bool:
        body = await st.api.get("/v1/customers/cafe/credits")
        return bool(body["balance"] == 10000)

    await pay(st, invoice_id, "cafe", 9000)
    await wait_for(settled, timeout_s=20)
    credits = await st.api.get("/v1/customers/cafe/credits")
    assert credits["grants"][0]["status"] == "active"


async def test_a_commitment_is_drawn_down_and_its_shortfall_trued_up(billing: Stack) -> None:
    st = billing
    await customer(st, "hotel", "USD", tax_rate="0.1")
    await st.api.ok("POST", "/v1/plans", plan("std", "USD", "100.00", unit="0.50"))
    r = await st.api.ok(
        "POST",
        "/v1/customers/hotel/commitments",
        {"id": "c2031", "amount": 50000, "start": OCT.isoformat(), "end": DEC.isoformat()},
    )
    assert r["commitment_id"] == "c2031"
    sub = await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "hotel", "plan": "std", "start": OCT.isoformat()}
    )
    # October: 100.00 + 40 calls x 0.50 = 120.00; November: 100.00 flat
    await st.send_usage(
        [usage_event(f"h{i}", "hotel", OCT + timedelta(hours=i), "api.call") for i in range(40)]
    )
    await st.wait_usage("calls", "hotel", OCT, NOV, Decimal(40))
    await st.run_billing(NOV + HOUR)
    await st.run_billing(DEC + HOUR)
    invoices = await st.invoices(subscription_id=sub["subscription_id"])
    assert sorted(i["subtotal"] for i in invoices) == [10000, 12000]
    assert all(i["credits"] == 0 for i in invoices)  # a commitment is not credit
    [c] = await st.api.get("/v1/customers/hotel/commitments")
    assert (c["drawn"], c["remaining"]) == (22000, 28000)

    # the term is over and its invoices are final: 500.00 - 220.00 = 280.00 is trued up,
    # taxed like the usage it stands for (10 %: 28.00), on an invoice of its own
    async with database(st.settings) as jobs:
        assert await CreditJobs(jobs, 100).true_up(DEC + 2 * HOUR) == 1
        assert await CreditJobs(jobs, 100).true_up(DEC + 3 * HOUR) == 0  # once
    [c] = await st.api.get("/v1/customers/hotel/commitments")
    assert (c["status"], c["drawn"], c["remaining"]) == ("trued_up", 22000, 28000)
    inv = await st.api.get(f"/v1/invoices/{c['true_up_invoice_id']}")
    assert [(ln["kind"], ln["amount"]) for ln in inv["lines"]] == [("true_up", 28000)]
    assert (inv["subtotal"], inv["tax"], inv["total"], inv["status"]) == (
        28000, 2800, 30800, "finalized",
    )  # fmt: skip


async def test_expiry_is_exact_rolls_over_and_emits_an_event(billing: Stack) -> None:
    st = billing
    await customer(st, "eva", "KWD")  # exponent 3
    end = OCT + timedelta(days=10, hours=3)
    await grant(
        st, "eva", id="r", amount=5_000, effective_at=OCT.isoformat(), expires_at=end.isoformat(),
        rollover={"expires_after_days": 30, "max_amount": 2_000},
    )  # fmt: skip
    async with database(st.settings) as jobs:
        assert await CreditJobs(jobs, 100).expire(end - HOUR) == 0
        assert await CreditJobs(jobs, 100).expire(end + HOUR) == 1
        assert await CreditJobs(jobs, 100).expire(end + 2 * HOUR) == 0
    ledger = await st.api.get("/v1/customers/eva/credits/ledger")
    expired = [e for e in ledger if e["kind"] == "expired"]
    assert [(e["grant_id"], e["amount"], e["at"]) for e in expired] == [
        ("r", -5_000, end.isoformat().replace("+00:00", "Z"))
    ]
    rolled = [g for g in (await st.api.get("/v1/customers/eva/credits"))["grants"]
              if g["rolled_over_from"] == "r"]  # fmt: skip
    assert [(g["amount"], g["expires_at"]) for g in rolled] == [
        (2_000, (end + timedelta(days=30)).isoformat().replace("+00:00", "Z"))
    ]
    at = {"as_of": (end + HOUR).isoformat()}
    assert (await st.api.get("/v1/customers/eva/credits", **at))["balance"] == 2_000
    before = {"as_of": (end - HOUR).isoformat()}
    assert (await st.api.get("/v1/customers/eva/credits", **before))["balance"] == 5_000
    records = await read_topic(
        st.settings, topics.EVENTS_INVOICING, 4
    )  # customer, 2 x granted, expired
    kinds = [json.loads(r.value)["type"] for r in records]
    assert kinds.count("credit.expired") == 1 and kinds.count("credit.granted") == 2


async def test_automatic_top_up_once_per_crossing(billing: Stack) -> None:
    st = billing
    await customer(st, "shop", "USD")
    await st.api.ok(
        "PUT",
        "/v1/customers/shop/credits/auto-top-up",
        {"threshold": 1000, "amount": 5000, "purchase_amount": 4500},
    )

    # the worker's job sees the projected balance 0 < 10.00 and buys credit once
    async def fired() -> bool:
        view = await st.api.get("/v1/customers/shop/credits/auto-top-up")
        return bool(view["count"] == 1)

    await wait_for(fired, timeout_s=20)
    async with database(st.settings) as jobs:  # and not again while it is unpaid
        assert await CreditJobs(jobs, 100).auto_top_up(datetime.now(UTC)) == 0
    view = await st.api.get("/v1/customers/shop/credits/auto-top-up")
    assert (view["armed"], view["count"]) == (False, 1)
    [pending] = (await st.api.get("/v1/customers/shop/credits"))["grants"]
    assert (pending["status"], pending["amount"], pending["purchase_amount"]) == (
        "pending", 5000, 4500,
    )  # fmt: skip
    inv = await st.api.get(f"/v1/invoices/{pending['invoice_id']}")
    assert (inv["total"], inv["status"]) == (4500, "finalized")

    # paid: the grant takes effect, the balance is above the threshold, it is armed again
    await pay(st, pending["invoice_id"], "shop", 4500)

    async def rearmed() -> bool:
        view = await st.api.get("/v1/customers/shop/credits/auto-top-up")
        return bool(view["armed"])

    await wait_for(rearmed, timeout_s=20)
    credits = await st.api.get("/v1/customers/shop/credits")
    assert (credits["balance"], credits["projected_balance"]) == (5000, 5000)
    view = await st.api.get("/v1/customers/shop/credits/auto-top-up")
    assert view["count"] == 1


async def test_credits_in_a_currency_of_exponent_three(billing: Stack) -> None:
    st = billing
    await customer(st, "kw", "KWD", tax_rate="0.05")
    await st.api.ok("POST", "/v1/plans", plan("kw", "KWD", "12.500"))
    await grant(st, "kw", id="k", amount=3_250, effective_at=OCT.isoformat())
    sub = await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "kw", "plan": "kw", "start": OCT.isoformat()}
    )
    await st.run_billing(NOV + HOUR)
    inv = await invoice_of(st, sub["subscription_id"])
    # 12.500 KWD = 12500 fils; 5 % tax = 625; credits 3250: 9875 (9.875 KWD) due
    assert (inv["subtotal"], inv["tax"], inv["credits"], inv["total"], inv["amount_due"]) == (
        12_500, 625, 3_250, 9_875, 9_875,
    )  # fmt: skip

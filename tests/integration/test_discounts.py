"""Coupons, promotion codes and discounts end to end over HTTP: real ingress, metering and
invoicing workers, the real broker and PostgreSQL. Every amount is computed by hand in the
test (docs/discounts.md has the same worked examples). Periods are in 2031 so the
scheduler's own runs (as of now) never touch them; discounts applied now were applied before
those periods ended."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from schemas import topics
from storage.invoicing.discounts import Coupon, DiscountApplication
from tests.conftest import TenantKey
from tests.integration.support import (
    Sessions,
    read_all,
    wait_committed_to_end,
    wait_outbox_drained,
)
from tests.integration.test_invoicing import Stack, stack
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
JAN = datetime(2032, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

METER = {"key": "calls", "event_type": "api.call", "aggregation": "count"}


def plan(key: str, currency: str, base: str, support: str | None = None) -> dict[str, Any]:
    prices: list[dict[str, Any]] = [
        {"kind": "flat", "key": "base", "name": "Base fee", "amount": base},
        {"kind": "per_unit", "key": "calls", "name": "Calls", "meter": "calls", "unit_price": "1"},
    ]
    if support is not None:
        prices.append({"kind": "flat", "key": "support", "name": "Support", "amount": support})
    return {"key": key, "name": key, "currency": currency, "interval": "month", "prices": prices}


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


async def subscribe(st: Stack, who: str, plan_key: str, id: str) -> None:
    body = {"id": id, "customer": who, "plan": plan_key, "start": OCT.isoformat()}
    await st.api.ok("POST", "/v1/subscriptions", body)


async def apply(st: Stack, who: str, **body: Any) -> dict[str, Any]:
    outcome = await st.api.command("POST", f"/v1/customers/{who}/discounts", body)
    return outcome


async def invoices_of(st: Stack, sub: str) -> list[dict[str, Any]]:
    rows = sorted(await st.invoices(subscription_id=sub), key=lambda r: r["period_start"])
    return [await st.api.get(f"/v1/invoices/{r['invoice_id']}") for r in rows]


def discount_lines(inv: dict[str, Any]) -> list[tuple[int, str, int]]:
    return [
        (ln["applies_to"], ln["price_key"], ln["amount"])
        for ln in inv["lines"]
        if ln["kind"] == "discount"
    ]


def totals(inv: dict[str, Any]) -> tuple[int, int, int, int]:
    return inv["subtotal"], inv["discount"], inv["tax"], inv["total"]


async def test_a_percent_coupon_repeating_two_periods_reduces_two_of_three_invoices(
    billing: Stack, sessions: Sessions
) -> None:
    st = billing
    await customer(st, "kopi", "USD", tax_rate="0.1")
    await st.api.ok("POST", "/v1/plans", plan("pro", "USD", "20.50"))
    await subscribe(st, "kopi", "pro", "s-kopi")
    coupon = {"id": "launch15", "name": "Launch", "percent_off": "15", "duration": "repeating",
              "duration_in_periods": 2}  # fmt: skip
    assert (await st.api.ok("POST", "/v1/coupons", coupon)) == {"coupon_id": "launch15"}
    applied = await apply(st, "kopi", coupon="launch15", subscription_id="s-kopi", id="d-kopi")
    assert applied["status"] == "succeeded", applied
    await st.run_billing(JAN + HOUR)
    oct_, nov, dec = await invoices_of(st, "s-kopi")
    # 20.50 USD at 15 %: 2050 x 0.15 = 307.5 cents -> 308 (half-even, rounded once);
    # net 2050 - 308 = 1742; tax 10 % = 174.2 -> 174; total 1742 + 174 = 1916
    for inv in (oct_, nov):
        assert discount_lines(inv) == [(0, "base", -308)]
        assert totals(inv) == (2050, 308, 174, 1916)
        [line] = [ln for ln in inv["lines"] if ln["kind"] == "discount"]
        assert (line["description"], line["discount_id"]) == ("Launch (15 % off)", "d-kopi")
        assert sum(ln["amount"] for ln in inv["lines"]) + inv["tax"] == inv["total"]
    # the third period: used up. 2050 + 205 tax = 2255
    assert discount_lines(dec) == []
    assert totals(dec) == (2050, 0, 205, 2255)
    # the calls line (0.00, no usage) is never discounted: only lines above zero

    [view] = await st.api.get("/v1/customers/kopi/discounts")
    assert (view["discount_id"], view["periods_applied"], view["amount_applied"]) == (
        "d-kopi", 2, 616,
    )  # fmt: skip
    assert view["coupon"]["times_redeemed"] == 1

    # the invoice.finalized event shows the discount lines and what they reduce
    await wait_outbox_drained(sessions)
    records, _ = await read_all(st.settings, topics.EVENTS_INVOICING)
    events = [json.loads(r.value) for r in records]
    mine = [e for e in events if e["tenantid"] == st.api.key.tenant_id]
    finalized = {
        e["data"]["period_start"][:7]: e["data"] for e in mine if e["type"] == "invoice.finalized"
    }
    assert discount_lines(finalized["2031-10"]) == [(0, "base", -308)]
    assert finalized["2031-10"]["discount"] == 308
    assert discount_lines(finalized["2031-12"]) == []
    # drafts do not show discounts: they are applied at finalization
    created = [e["data"] for e in mine if e["type"] == "invoice.created"]
    assert created and all(d["discount"] == 0 for d in created)
    types = [e["type"] for e in mine]
    assert types.count("coupon.created") == 1 and types.count("discount.applied") == 1


async def test_amount_off_forever_on_a_customer_spreads_in_line_order_jpy(
    billing: Stack,
) -> None:
    st = billing
    await customer(st, "ramen", "JPY")
    await st.api.ok("POST", "/v1/plans", plan("shop", "JPY", "300", support="400"))
    await subscribe(st, "ramen", "shop", "s-ramen")
    coupon = {"id": "yen500", "name": "Regular", "amount_off": 500, "currency": "JPY",
              "duration": "forever"}  # fmt: skip
    await st.api.ok("POST", "/v1/coupons", coupon)
    assert (await apply(st, "ramen", coupon="yen500"))["status"] == "succeeded"
    await st.run_billing(DEC + HOUR)
    for inv in await invoices_of(st, "s-ramen"):
        # lines: base 300 (0), calls 0 (1), support 400 (2); 500 off in line order:
        # base takes min(500, 300) = 300, support min(200, 400) = 200; no tax
        # total = 700 - 500 = 200
        assert discount_lines(inv) == [(0, "base", -300), (2, "support", -200)]
        assert totals(inv) == (700, 500, 0, 200)
        descriptions = {ln["description"] for ln in inv["lines"] if ln["kind"] == "discount"}
        assert descriptions == {"Regular (500 JPY off)"}


async def test_a_coupon_restricted_to_a_price_bhd(billing: Stack) -> None:
    st = billing
    await customer(st, "souq", "BHD", tax_rate="0.1")
    await st.api.ok("POST", "/v1/plans", plan("souq", "BHD", "10.000", support="2.500"))
    await subscribe(st, "souq", "souq", "s-souq")
    coupon = {"id": "support", "name": "Support deal", "percent_off": "12.5", "duration": "once",
              "applies_to": {"prices": ["support"]}}  # fmt: skip
    await st.api.ok("POST", "/v1/coupons", coupon)
    assert (await apply(st, "souq", coupon="support"))["status"] == "succeeded"
    await st.run_billing(DEC + HOUR)
    oct_, nov = await invoices_of(st, "s-souq")
    # support 2.500 BHD = 2500 fils at 12.5 % = 312.5 -> 312 (half-even); base untouched
    # subtotal 10000 + 2500 = 12500; net 12188; tax 10 % = 1218.8 -> 1219; total 13407
    assert discount_lines(oct_) == [(2, "support", -312)]
    assert totals(oct_) == (12500, 312, 1219, 13407)
    # once: November has none. 12500 + 1250 = 13750
    assert discount_lines(nov) == []
    assert totals(nov) == (12500, 0, 1250, 13750)


async def test_redemption_limits_and_promotion_codes(billing: Stack) -> None:
    st = billing
    for who in ("a", "b", "c"):
        await customer(st, who, "USD")
    await customer(st, "e", "EUR")
    await st.api.ok(
        "POST", "/v1/coupons",
        {"id": "one", "name": "One", "percent_off": "5", "duration": "once", "max_redemptions": 1},
    )  # fmt: skip
    assert (await apply(st, "a", coupon="one", id="d1"))["status"] == "succeeded"
    # the same discount again: a no-op (not a second redemption)
    assert (await apply(st, "a", coupon="one", id="d1"))["status"] == "succeeded"
    refused = await apply(st, "b", coupon="one")
    assert refused["status"] == "failed", refused
    assert refused["error"]["field"] == "max_redemptions", refused
    assert (await st.api.get("/v1/coupons/one"))["times_redeemed"] == 1

    # amount off in another currency than the customer's
    await st.api.ok(
        "POST", "/v1/coupons",
        {"id": "usd5", "name": "Five", "amount_off": 500, "currency": "USD", "duration": "once"},
    )  # fmt: skip
    refused = await apply(st, "e", coupon="usd5")
    assert (refused["status"], refused["error"]["field"]) == ("failed", "currency"), refused

    # a promotion code, redeemed in any letter case, limited to one redemption
    await st.api.ok(
        "POST", "/v1/coupons", {"id": "ten", "name": "Ten", "percent_off": "10", "duration": "once"}
    )
    r = await st.api.ok(
        "POST", "/v1/promotion-codes", {"code": "WELCOME10", "coupon": "ten", "max_redemptions": 1}
    )
    assert r == {"code": "WELCOME10", "coupon_id": "ten"}
    ok = await apply(st, "b", promotion_code="welcome10")
    assert ok["status"] == "succeeded", ok
    assert ok["result"]["coupon_id"] == "ten" and ok["result"]["promotion_code"] == "WELCOME10"
    refused = await apply(st, "c", promotion_code="Welcome10")
    assert (refused["status"], refused["error"]["field"]) == ("failed", "max_redemptions")
    code = await st.api.get("/v1/promotion-codes/welcome10")
    assert (code["code"], code["times_redeemed"]) == ("WELCOME10", 1)
    # another code differing only in case is the same code: other terms are refused
    clash = await st.api.command(
        "POST", "/v1/promotion-codes", {"code": "welcome10", "coupon": "one"}
    )
    assert (clash["status"], clash["error"]["field"]) == ("failed", "code"), clash
    # coupons are immutable
    other = await st.api.command(
        "POST", "/v1/coupons", {"id": "ten", "name": "Ten", "percent_off": "11", "duration": "once"}
    )
    assert (other["status"], other["error"]["field"]) == ("failed", "id"), other

    # removing a discount: it ends, and its view says so
    removed = await st.api.command(
        "DELETE", "/v1/customers/b/discounts/" + ok["result"]["discount_id"], None
    )
    assert removed["status"] == "succeeded", removed
    [view] = await st.api.get("/v1/customers/b/discounts")
    assert view["removed_at"] is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"percent_off": "10", "amount_off": 100, "currency": "USD"}, "amount_off"),
        ({"percent_off": 12.5}, "percent_off"),
        ({"percent_off": "0"}, "percent_off"),
        ({"percent_off": "100.5"}, "percent_off"),
        ({"amount_off": 100}, "currency"),
        ({"amount_off": 10.5, "currency": "USD"}, "amount_off"),
        ({}, "percent_off"),
        ({"percent_off": "10", "duration": "repeating"}, "duration_in_periods"),
        ({"percent_off": "10", "duration_in_periods": 3}, "duration_in_periods"),
    ],
)
async def test_bad_coupons_are_refused_at_the_door_naming_the_field(
    billing: Stack, body: dict[str, Any], field: str
) -> None:
    st = billing
    full = {"id": "bad", "name": "Bad", "duration": "once"} | body
    r = await st.api.send("POST", "/v1/coupons", full)
    assert r.status_code == 422, r.text
    assert field in r.text, r.text


async def test_unknown_customers_coupons_and_codes_are_404_at_once(billing: Stack) -> None:
    st = billing
    await customer(st, "known", "USD")
    r = await st.api.send("POST", "/v1/customers/nobody/discounts", {"coupon": "x"})
    assert r.status_code == 404, r.text
    r = await st.api.send("POST", "/v1/customers/known/discounts", {"coupon": "nope"})
    assert r.status_code == 404, r.text
    r = await st.api.send("POST", "/v1/customers/known/discounts", {"promotion_code": "NOPE"})
    assert r.status_code == 404, r.text
    r = await st.api.send(
        "POST", "/v1/customers/known/discounts", {"promotion_code": "A", "coupon": "b"}
    )
    assert r.status_code == 422 and "coupon" in r.text, r.text


async def test_replaying_the_commands_and_billing_again_applies_nothing_twice(
    billing: Stack, sessions: Sessions
) -> None:
    st = billing
    await customer(st, "mie", "IDR", tax_rate="0.11")
    await st.api.ok("POST", "/v1/plans", plan("mie", "IDR", "150000.00"))
    await subscribe(st, "mie", "mie", "s-mie")
    await st.api.ok(
        "POST", "/v1/coupons",
        {"id": "mie20", "name": "Mie", "percent_off": "20", "duration": "forever",
         "max_redemptions": 5},
    )  # fmt: skip
    assert (await apply(st, "mie", coupon="mie20", id="d-mie"))["status"] == "succeeded"
    await st.run_billing(DEC + HOUR)
    before = await invoices_of(st, "s-mie")
    # 150000.00 IDR at 20 % = 30000.00 (3000000 minor units); net 12000000; tax 11 % =
    # 1320000; total 13320000
    assert [totals(i) for i in before] == [(15000000, 3000000, 1320000, 13320000)] * 2

    async def counts() -> tuple[int, int]:
        async with sessions() as s:
            apps = await s.scalar(
                select(func.count()).where(DiscountApplication.discount_id == "d-mie")
            )
            redeemed = await s.scalar(
                select(Coupon.times_redeemed).where(
                    Coupon.tenant_id == st.api.key.tenant_id, Coupon.id == "mie20"
                )
            )
            return int(apps or 0), int(redeemed or 0)

    assert await counts() == (2, 1)
    await replay(
        st.settings,
        ReplayRequest(
            topic=topics.COMMANDS_INVOICING,
            into=topics.COMMANDS_INVOICING,
            start=parse_bound("earliest", "--from"),
            reason="test: replaying discounts is harmless",
            actor="tests",
        ),
    )
    await wait_committed_to_end(
        st.settings, "billstream.invoicing.commands", topics.COMMANDS_INVOICING
    )
    await st.run_billing(DEC + HOUR)  # and billing again, as of the same time
    assert await counts() == (2, 1)
    assert await invoices_of(st, "s-mie") == before

"""Invoicing end to end over HTTP: real ingress, metering and invoicing workers, the real
broker and PostgreSQL. Time moves with billing runs ``as_of`` a given instant; periods are
in 2031 so the scheduler's own runs (as of now) never touch them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from schemas import topics
from schemas.payments import PaymentData, PaymentRefunded, PaymentSucceeded, RefundData
from schemas.pricing import PlanSpec
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client, ingress
from tests.integration.support import (
    Sessions,
    producer,
    read_all,
    read_topic,
    running,
    send_raw,
    wait_committed_to_end,
    wait_outbox_drained,
)
from workers.devstack import wait_for
from workers.invoicing import pricing
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.runtime.app import Worker
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
JAN = datetime(2032, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

METERS = [
    {"key": "tokens", "event_type": "llm.completion", "aggregation": "sum",
     "value_property": "$.tokens"},
    {"key": "calls", "event_type": "api.call", "aggregation": "count"},
]  # fmt: skip
PRO = {
    "key": "pro",
    "name": "Pro",
    "currency": "USD",
    "interval": "month",
    "prices": [
        {"kind": "flat", "key": "base", "name": "Pro plan", "amount": "49.00"},
        {"kind": "per_unit", "key": "tokens", "name": "Tokens", "meter": "tokens",
         "unit_price": "0.000125", "included_quantity": "1000"},
        {"kind": "graduated", "key": "calls", "name": "API calls", "meter": "calls",
         "tiers": [{"up_to": "10", "unit_price": "0.50"}, {"up_to": None, "unit_price": "0.10"}]},
    ],
}  # fmt: skip
ALICE = {"external_id": "alice", "name": "Alice Ltd", "currency": "USD", "tax_rate": "0.1",
         "net_terms_days": 14, "email": "billing@alice.example"}  # fmt: skip


def usage_event(id: str, subject: str, time: datetime, type: str, **data: Any) -> dict[str, Any]:
    return {"id": id, "source": "tests", "type": type, "subject": subject,
            "time": time.isoformat(), "data": data}  # fmt: skip


@dataclass
class Stack:
    settings: Settings
    api: Client
    http: httpx.AsyncClient

    async def send_usage(self, events: list[dict[str, Any]]) -> None:
        r = await self.api.send("POST", "/v1/events", {"events": events})
        assert r.status_code == 202, r.text

    async def wait_usage(self, meter: str, subject: str, start: datetime, end: datetime,
                         expected: Decimal) -> None:  # fmt: skip
        async def reached() -> bool:
            body = await self.api.get(
                f"/v1/meters/{meter}/usage", subject=subject, window_size="none",
                **{"from": start.isoformat(), "to": end.isoformat()},
            )  # fmt: skip
            return sum((Decimal(r["value"]) for r in body["data"]), Decimal(0)) == expected

        await wait_for(reached, timeout_s=20)

    async def run_billing(self, as_of: datetime) -> dict[str, Any]:
        result = await self.api.ok("POST", "/v1/billing-runs", {"as_of": as_of.isoformat()})

        async def completed() -> dict[str, Any] | None:
            r = await self.api.http.get(result["status_url"], headers=self.api.auth)
            if r.status_code == 404:
                return None
            body: dict[str, Any] = r.json()
            return body if body["status"] == "completed" else None

        run: dict[str, Any] = await wait_for(completed, timeout_s=30)
        return run

    async def invoices(self, **params: Any) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = await self.api.get("/v1/invoices", **params)
        return body


@contextlib.asynccontextmanager
async def stack(settings: Settings, tenant: TenantKey, *workers: Worker) -> AsyncIterator[Stack]:
    async with contextlib.AsyncExitStack() as stack_:
        # workers join their consumer groups concurrently (each join takes a while)
        started = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        for w, result in zip(workers, started, strict=True):
            if not isinstance(result, BaseException):
                stack_.push_async_callback(w.stop)
        for result in started:
            if isinstance(result, BaseException):
                raise result
        base = await stack_.enter_async_context(ingress(settings))
        http = await stack_.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30))
        yield Stack(settings, Client(http, tenant), http)


@pytest.fixture
def billing_settings(settings: Settings) -> Settings:
    # late usage of a period is billed up to 70 days after it ended (default 35), so the
    # October usage that arrives after November was finalized still lands on December
    return settings.model_copy(update={"invoicing_tick_s": 0.1, "late_usage_lookback_days": 70})


@pytest.fixture
async def billing(billing_settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = billing_settings
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        for meter in METERS:
            await st.api.ok("POST", "/v1/meters", meter)
        await st.api.ok("POST", "/v1/customers", ALICE)
        await st.api.ok("POST", "/v1/plans", PRO)
        yield st


def recomputed(plan: dict[str, Any], line: dict[str, Any], value: Decimal) -> int:
    """A line's amount from the plan and the metering value, independently of the worker."""
    spec = PlanSpec.model_validate(plan)
    price = next(p for p in spec.prices if p.key == line["price_key"])
    return pricing.to_minor(pricing.price_usage(price, value).amount, spec.currency)


async def october_usage(st: Stack) -> None:
    tokens = [120_000, 80_000, 1_337]
    events = [
        usage_event(f"t{i}", "alice", OCT + timedelta(days=3 * i, minutes=7), "llm.completion",
                    tokens=n)
        for i, n in enumerate(tokens)
    ]  # fmt: skip
    events += [
        usage_event(f"c{i}", "alice", OCT + timedelta(hours=i), "api.call") for i in range(14)
    ]
    # not alice's, and not October's: neither is on alice's October invoice
    events.append(usage_event("b1", "bob", OCT + HOUR, "llm.completion", tokens=5_000_000))
    events.append(usage_event("n1", "alice", NOV + HOUR / 2, "llm.completion", tokens=999_000))
    await st.send_usage(events)
    await st.wait_usage("tokens", "alice", OCT, NOV, Decimal(201_337))
    await st.wait_usage("calls", "alice", OCT, NOV, Decimal(14))


async def test_a_period_close_bills_exactly_the_periods_usage_and_traces_every_line(
    billing: Stack, billing_settings: Settings
) -> None:
    st = billing
    sub = await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "start": OCT.isoformat()}
    )
    await october_usage(st)

    run = await st.run_billing(NOV + HOUR)
    assert (run["invoices_created"], run["invoices_finalized"]) == (1, 1)
    [invoice] = await st.invoices(subscription_id=sub["subscription_id"])
    invoice = await st.api.get(f"/v1/invoices/{invoice['invoice_id']}")

    assert invoice["status"] == "finalized"
    assert invoice["number"] == "INV-2031-000001"
    assert (invoice["period_start"], invoice["period_end"]) == (
        "2031-10-01T00:00:00Z", "2031-11-01T00:00:00Z",
    )  # fmt: skip
    lines = {ln["price_key"]: ln for ln in invoice["lines"]}
    # 49.00 flat; (201,337 - 1,000 included) x 0.000125 = 25.042125; 10 x 0.50 + 4 x 0.10
    assert {k: ln["amount"] for k, ln in lines.items()} == {
        "base": 4900,
        "tokens": 2504,
        "calls": 540,
    }
    assert lines["calls"]["tiers"] == [
        {"tier": 0, "quantity": "10", "unit_price": "0.50", "flat_fee": "0", "amount": "5.00"},
        {"tier": 1, "quantity": "4", "unit_price": "0.10", "flat_fee": "0", "amount": "0.40"},
    ]
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (7944, 794, 8738)
    assert invoice["amount_due"] == 8738
    assert invoice["due_at"] == "2031-11-15T01:00:00Z"  # finalized at the run's as_of + 14 days

    # every usage line names its meter, subject and period, and recomputing it from the
    # metering read model (over HTTP) gives the same value and amount
    for ln in (lines["tokens"], lines["calls"]):
        assert (ln["meter"], ln["subject"]) == (ln["price_key"], "alice")
        body = await st.api.get(
            f"/v1/meters/{ln['meter']}/usage", subject="alice", window_size="none",
            **{"from": ln["period_start"], "to": ln["period_end"]},
        )  # fmt: skip
        [row] = body["data"]
        assert Decimal(row["value"]) == Decimal(ln["quantity"])
        assert recomputed(PRO, ln, Decimal(row["value"])) == ln["amount"]
    assert sum(ln["amount"] for ln in invoice["lines"]) == invoice["subtotal"]

    # events: created (draft), then finalized, on the invoicing topic, keyed by customer
    # customer, plan, subscription created; invoice created (draft) then finalized
    records = await read_topic(billing_settings, topics.EVENTS_INVOICING, 5)
    types = [json.loads(r.value)["type"] for r in records]
    assert sorted(types) == sorted([
        "customer.created", "plan.created", "subscription.created",
        "invoice.created", "invoice.finalized",
    ])  # fmt: skip
    invoice_events = [r for r in records if json.loads(r.value)["type"].startswith("invoice.")]
    assert [json.loads(r.value)["type"] for r in invoice_events] == [
        "invoice.created",
        "invoice.finalized",
    ]  # one customer's events share a key, so a partition: in order
    assert {r.key for r in invoice_events} == {b"acme:alice"}
    finalized = json.loads(invoice_events[1].value)["data"]
    assert (finalized["number"], finalized["total"]) == ("INV-2031-000001", 8738)

    # a second run as of the same time bills nothing again
    again = await st.run_billing(NOV + HOUR)
    assert (again["invoices_created"], again["invoices_finalized"]) == (0, 0)
    assert len(await st.invoices()) == 1


async def test_late_usage_becomes_an_adjustment_line_on_the_next_invoice(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "start": OCT.isoformat()}
    )
    await october_usage(st)
    await st.run_billing(NOV + HOUR)
    [october] = await st.invoices()

    # October usage arriving after October was finalized
    late = OCT + timedelta(days=20)
    await st.send_usage(
        [usage_event("late-1", "alice", late, "llm.completion", tokens=40_000)]
        + [usage_event(f"late-c{i}", "alice", late, "api.call") for i in range(3)]
    )
    await st.wait_usage("tokens", "alice", OCT, NOV, Decimal(241_337))
    await st.run_billing(DEC + HOUR)

    assert (await st.api.get(f"/v1/invoices/{october['invoice_id']}"))["lines"] == october["lines"]
    [november] = await st.invoices(status="finalized", limit=1)
    assert november["period_start"] == "2031-11-01T00:00:00Z"
    assert november["number"] == "INV-2031-000002"
    adjustments = {ln["price_key"]: ln for ln in november["lines"] if ln["adjustment_for"]}
    label = "2031-10-01T00:00Z/2031-11-01T00:00Z"
    assert {ln["adjustment_for"] for ln in adjustments.values()} == {label}
    # tokens: 240,337 billable now -> 30.042125 -> 3004, 2504 billed: +500 for +40,000
    assert (adjustments["tokens"]["quantity"], adjustments["tokens"]["amount"]) == ("40000", 500)
    # calls: 17 now -> 5.70, 5.40 billed: +30 for +3
    assert (adjustments["calls"]["quantity"], adjustments["calls"]["amount"]) == ("3", 30)
    assert label in adjustments["tokens"]["description"]
    regular = {
        ln["price_key"]: ln["amount"] for ln in november["lines"] if not ln["adjustment_for"]
    }
    # November's own usage: the 999,000 tokens sent for Nov 1, 00:30
    assert regular == {"base": 4900, "tokens": 12475, "calls": 0}
    assert november["subtotal"] == 4900 + 12475 + 500 + 30

    # more October usage still: December corrects October against everything billed for it
    # so far (the October line and November's adjustment), still labelled October
    await st.send_usage([usage_event("late-2", "alice", late, "llm.completion", tokens=8_000)])
    await st.wait_usage("tokens", "alice", OCT, NOV, Decimal(249_337))
    await st.run_billing(JAN + HOUR)
    [december] = await st.invoices(status="finalized", limit=1)
    assert december["period_start"] == "2031-12-01T00:00:00Z"
    [again] = [ln for ln in december["lines"] if ln["adjustment_for"]]
    # 248,337 billable -> 31.042125 -> 3104; 2504 + 500 billed: +100 for +8,000
    assert (again["adjustment_for"], again["quantity"], again["amount"]) == (label, "8000", 100)


async def test_payments_mark_the_invoice_paid_when_they_cover_it(
    billing: Stack, billing_settings: Settings
) -> None:
    st = billing
    await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "start": OCT.isoformat()}
    )
    await st.run_billing(NOV + HOUR)
    [invoice] = await st.invoices()
    assert invoice["total"] == 5390  # 49.00 + 10 % tax, no usage

    async def pay(payment_id: str, amount: int) -> None:
        event = PaymentSucceeded(
            source="tests",
            tenantid="acme",
            data=PaymentData(
                payment_id=payment_id, invoice_id=invoice["invoice_id"], customer="alice",
                amount=amount, currency="USD",
            ),
        )  # fmt: skip
        async with producer(billing_settings) as p:
            await send_raw(p, topics.EVENTS_PAYMENTS, event.to_json(), b"acme:alice")

    async def status(expected: str, paid: int) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = await st.api.get(f"/v1/invoices/{invoice['invoice_id']}")
            return body if (body["status"], body["amount_paid"]) == (expected, paid) else None

        result: dict[str, Any] = await wait_for(reached, timeout_s=20)
        return result

    await pay("pay-1", 2000)
    partial = await status("finalized", 2000)
    assert partial["amount_due"] == 3390
    await pay("pay-1", 2000)  # the same payment again: counted once
    await pay("pay-2", 3390)
    paid = await status("paid", 5390)
    assert [p["payment_id"] for p in paid["payments"]] == ["pay-1", "pay-2"]
    assert paid["amount_due"] == 0
    # paid is final
    outcome = await st.api.command("POST", f"/v1/invoices/{invoice['invoice_id']}/void", {})
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "invalid_transition"

    # a refund of one of its payments shows on the invoice (once), which stays paid
    refund = PaymentRefunded(
        source="tests",
        tenantid="acme",
        data=RefundData(
            refund_id="re-1", payment_id="pay-2", invoice_id=invoice["invoice_id"],
            customer="alice", amount=1000, amount_refunded=1000, currency="USD",
        ),
    )  # fmt: skip
    async with producer(billing_settings) as p:
        for _ in range(2):
            await send_raw(p, topics.EVENTS_PAYMENTS, refund.to_json(), b"acme:alice")

    async def refunded() -> dict[str, Any] | None:
        body: dict[str, Any] = await st.api.get(f"/v1/invoices/{invoice['invoice_id']}")
        return body if body["amount_refunded"] else None

    await wait_for(refunded, timeout_s=20)
    await wait_committed_to_end(
        billing_settings, "billstream.invoicing.payments", topics.EVENTS_PAYMENTS
    )
    after = await st.api.get(f"/v1/invoices/{invoice['invoice_id']}")
    assert (after["status"], after["amount_paid"], after["amount_refunded"]) == ("paid", 5390, 1000)
    assert [(p["payment_id"], p["amount"], p["method"]) for p in after["payments"]][-1] == (
        "re-1", -1000, "refund",
    )  # fmt: skip
    assert len(after["payments"]) == 3


async def test_bad_commands_fail_clearly_and_write_nothing(
    billing: Stack, sessions: Sessions
) -> None:
    st = billing
    bad = [
        ({"customer": "nobody", "plan": "pro"}, "not_found", "customer"),
        ({"customer": "alice", "plan": "nope"}, "not_found", "plan"),
    ]
    for body, code, field in bad:
        outcome = await st.api.command("POST", "/v1/subscriptions", body)
        assert outcome["status"] == "failed"
        assert (outcome["error"]["code"], outcome["error"]["field"]) == (code, field)
    await st.api.ok("POST", "/v1/customers", ALICE | {"external_id": "yen", "currency": "JPY"})
    outcome = await st.api.command("POST", "/v1/subscriptions", {"customer": "yen", "plan": "pro"})
    assert outcome["error"]["field"] == "plan"
    assert "JPY" in outcome["error"]["message"]

    await st.api.ok("POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "id": "s1"})
    outcome = await st.api.command(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "id": "s2"}
    )
    assert (outcome["error"]["code"], outcome["error"]["field"]) == ("conflict", "plan")
    assert "s1" in outcome["error"]["message"]
    assert [s["subscription_id"] for s in await st.api.get("/v1/subscriptions")] == ["s1"]

    outcome = await st.api.command("POST", "/v1/plans", PRO | {"prices": PRO["prices"][:1]})
    assert (outcome["error"]["code"], outcome["error"]["field"]) == ("conflict", "key")
    plan = dict(PRO, key="ghost", prices=[dict(PRO["prices"][1], meter="nothing")])
    outcome = await st.api.command("POST", "/v1/plans", plan)
    assert (outcome["error"]["code"], outcome["error"]["field"]) == ("not_found", "prices[0].meter")
    assert [p["key"] for p in await st.api.get("/v1/plans")] == ["pro"]

    # refused at the door (422 naming the field), nothing published
    cases = [
        ("/v1/customers", ALICE | {"tax_rate": "19"}, "tax_rate"),
        ("/v1/customers", ALICE | {"currency": "XYZ"}, "currency"),
        ("/v1/customers", ALICE | {"tax_rate": 0.1}, "tax_rate"),
        ("/v1/plans", dict(PRO, prices=[dict(PRO["prices"][1], unit_price="-1")]),
         "prices[0].per_unit.unit_price"),
        ("/v1/subscriptions", {"customer": "alice", "plan": "pro",
                               "start": "2031-10-01T00:30:00Z"}, "start"),
    ]  # fmt: skip
    for path, body, field in cases:
        r = await st.api.send("POST", path, body)
        assert r.status_code == 422, (path, body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert field in {e["field"] for e in r.json()["errors"]}, r.json()


async def test_cancel_immediately_prorates_the_flat_fee_and_plan_changes_wait_for_the_boundary(
    billing: Stack,
) -> None:
    st = billing
    basic = PRO | {"key": "basic", "name": "Basic", "prices": [PRO["prices"][0] | {"amount": "10"}]}
    await st.api.ok("POST", "/v1/plans", basic)
    await st.api.ok("POST", "/v1/customers", ALICE | {"external_id": "carol", "tax_rate": None})
    for customer, id in (("alice", "a"), ("carol", "c")):
        body = {"customer": customer, "plan": "pro", "start": OCT.isoformat(), "id": id}
        await st.api.ok("POST", "/v1/subscriptions", body)

    changed = await st.api.ok("POST", "/v1/subscriptions/a/change-plan", {"plan": "basic"})
    assert changed["effective_at"] == NOV.isoformat()
    # carol leaves on Oct 11, 06:00: 10.25 of 31 days
    cut = OCT + timedelta(days=10, hours=6)
    ended = await st.api.ok("POST", "/v1/subscriptions/c/cancel",
                            {"mode": "immediately", "at": cut.isoformat()})  # fmt: skip
    assert Decimal(ended["proration"]) == Decimal(10.25 * 86400) / Decimal(31 * 86400)

    await st.run_billing(DEC + HOUR)
    by_sub: dict[str, list[dict[str, Any]]] = {}
    for inv in sorted(await st.invoices(), key=lambda i: i["period_start"]):
        by_sub.setdefault(inv["subscription_id"], []).append(inv)
    [carol] = by_sub["c"]
    assert (carol["period_start"], carol["period_end"]) == (OCT.isoformat().replace("+00:00", "Z"),
                                                            "2031-10-11T06:00:00Z")  # fmt: skip
    base = next(ln for ln in carol["lines"] if ln["price_key"] == "base")
    assert base["amount"] == 1620  # 49.00 x 10.25 / 31 = 16.2016… -> 16.20
    # alice: October on pro, November on basic
    assert [i["lines"][0]["amount"] for i in by_sub["a"]] == [4900, 1000]
    assert (await st.api.get("/v1/subscriptions/c"))["status"] == "ended"
    assert (await st.api.get("/v1/subscriptions/a"))["plan"] == "basic"


async def test_drafts_wait_for_metering_to_catch_up_before_they_finalize(
    billing_settings: Settings, tenant: TenantKey
) -> None:
    s = billing_settings
    metering = build_metering(s)
    async with stack(s, tenant, metering, build_invoicing(s)) as st:
        for meter in METERS:
            await st.api.ok("POST", "/v1/meters", meter)
        await st.api.ok("POST", "/v1/customers", ALICE)
        await st.api.ok("POST", "/v1/plans", PRO)
        await st.api.ok("POST", "/v1/subscriptions",
                        {"customer": "alice", "plan": "pro", "start": OCT.isoformat()})  # fmt: skip
        await metering.stop()  # metering is down: October's usage waits in the topic
        await st.send_usage([usage_event(f"c{i}", "alice", OCT + timedelta(days=2), "api.call")
                             for i in range(12)])  # fmt: skip
        run = await st.run_billing(NOV + HOUR)
        assert (run["invoices_created"], run["invoices_finalized"], run["drafts_waiting"]) == (
            1,
            0,
            1,
        )
        [draft] = await st.invoices()
        assert draft["status"] == "draft"

        async with running(build_metering(s)):
            await st.wait_usage("calls", "alice", OCT, NOV, Decimal(12))
            run = await st.run_billing(NOV + HOUR)
        assert run["invoices_finalized"] == 1
        [invoice] = await st.invoices()
        calls = next(ln for ln in invoice["lines"] if ln["price_key"] == "calls")
        assert (invoice["status"], calls["quantity"], calls["amount"]) == ("finalized", "12", 520)


async def test_tenants_never_see_each_others_invoicing(billing: Stack, sessions: Sessions) -> None:
    other = await make_tenant(sessions, "globex")
    theirs = Client(billing.http, other)
    body = {"customer": "alice", "plan": "pro", "start": OCT.isoformat(), "id": "s"}
    await billing.api.ok("POST", "/v1/subscriptions", body)
    await billing.run_billing(NOV + HOUR)
    [invoice] = await billing.invoices()
    for path in ("/v1/customers/alice", "/v1/plans/pro", "/v1/subscriptions/s",
                 f"/v1/invoices/{invoice['invoice_id']}"):  # fmt: skip
        r = await theirs.http.get(path, headers=theirs.auth)
        assert r.status_code == 404, path
    assert await theirs.get("/v1/invoices") == []
    # globex's own run bills nothing of acme's
    run = await Stack(billing.settings, theirs, billing.http).run_billing(DEC + HOUR)
    assert (run["invoices_created"], run["invoices_finalized"]) == (0, 0)
    r = await theirs.send("POST", f"/v1/invoices/{invoice['invoice_id']}/void", {})
    assert r.status_code == 404
    assert (await billing.api.get(f"/v1/invoices/{invoice['invoice_id']}"))["status"] == "finalized"


async def test_replaying_the_invoicing_commands_changes_nothing(
    billing: Stack, billing_settings: Settings, sessions: Sessions
) -> None:
    st = billing
    body = {"customer": "alice", "plan": "pro", "start": OCT.isoformat(), "id": "s"}
    await st.api.ok("POST", "/v1/subscriptions", body)
    await st.api.ok("POST", "/v1/subscriptions/s/change-plan", {"plan": "pro"})
    await october_usage(st)
    await st.run_billing(NOV + HOUR)
    before = (await st.invoices(), await st.api.get("/v1/subscriptions"))
    await wait_outbox_drained(sessions)
    events_before = len((await read_all(billing_settings, topics.EVENTS_INVOICING))[0])

    # every command so far (meters' aside), re-published onto its own topic: the worker
    # reads each again, recognises it and does nothing (no new invoice, no new event)
    result = await replay(
        billing_settings,
        ReplayRequest(
            topic=topics.COMMANDS_INVOICING,
            into=topics.COMMANDS_INVOICING,
            start=parse_bound("earliest", "--from"),
            reason="test: replay is harmless",
            actor="tests",
        ),
    )
    assert result.published == 5  # customer, plan, subscription, plan change, billing run
    await wait_committed_to_end(
        billing_settings, "billstream.invoicing.commands", topics.COMMANDS_INVOICING
    )
    await st.run_billing(NOV + HOUR)  # and billing again, as of the same time
    assert (await st.invoices(), await st.api.get("/v1/subscriptions")) == before
    await wait_outbox_drained(sessions)
    records, _ = await read_all(billing_settings, topics.EVENTS_INVOICING)
    assert len(records) == events_before

"""Trials and immediate plan changes end to end over HTTP (real ingress, metering and
invoicing workers, the real broker and PostgreSQL), ADR 0049. Amounts by hand in comments,
in JPY (exponent 0), USD (2) and KWD (3). Time moves with billing runs ``as_of`` an
instant; periods are in 2031 so the scheduler's own runs (as of now) never touch them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas import topics
from tests.conftest import TenantKey
from tests.integration.support import (
    Sessions,
    read_all,
    wait_committed_to_end,
    wait_outbox_drained,
)
from tests.integration.test_invoicing import Stack, stack, usage_event
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
def lifecycle_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"invoicing_tick_s": 0.1})


@pytest.fixture
async def billing(lifecycle_settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = lifecycle_settings
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        meter = {"key": "tokens", "event_type": "llm", "aggregation": "sum",
                 "value_property": "$.n"}  # fmt: skip
        await st.api.ok("POST", "/v1/meters", meter)
        yield st


def plan(key: str, currency: str, flat: str, unit: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "name": key, "currency": currency, "interval": "month", "prices": [
        {"kind": "flat", "key": "base", "name": "Base", "amount": flat},
        {"kind": "per_unit", "key": "tokens", "name": "Tokens", "meter": "tokens",
         "unit_price": unit},
    ]} | extra  # fmt: skip


async def customer(st: Stack, who: str, currency: str, tax_rate: str | None = None) -> None:
    body = {"external_id": who, "name": who, "currency": currency, "tax_rate": tax_rate}
    await st.api.ok("POST", "/v1/customers", body)


async def tokens(st: Stack, id: str, who: str, at: datetime, n: int, hour: int = 0) -> None:
    """Send ``n`` tokens at ``at``; wait until its hour holds ``hour`` (default ``n``)."""
    await st.send_usage([usage_event(id, who, at, "llm", n=n)])
    start = at.replace(minute=0, second=0)
    await st.wait_usage("tokens", who, start, start + HOUR, Decimal(hour or n))


async def finalized(st: Stack, as_of: datetime, **params: Any) -> list[dict[str, Any]]:
    """Run billing as of ``as_of`` until no draft is left (a draft waits for metering)."""

    async def done() -> list[dict[str, Any]] | None:
        run = await st.run_billing(as_of)
        return None if run["drafts_waiting"] else await st.invoices(**params)

    result: list[dict[str, Any]] = await wait_for(done, timeout_s=30)
    return result


def line(invoice: dict[str, Any], key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(ln for ln in invoice["lines"] if ln["price_key"] == key)
    return found


def of_period(invoices: list[dict[str, Any]], start: datetime) -> dict[str, Any]:
    found: dict[str, Any] = next(i for i in invoices if i["period_start"] == z(start))
    return found


async def event_types(settings: Settings, sessions: Sessions, subject: str) -> list[str]:
    await wait_outbox_drained(sessions)
    records, _ = await read_all(settings, topics.EVENTS_INVOICING)
    events = [json.loads(r.value) for r in records]
    return [e["type"] for e in events if e.get("subject") == subject]


async def test_a_trial_shows_its_usage_bills_nothing_is_announced_once_and_converts(
    billing: Stack, lifecycle_settings: Settings, sessions: Sessions
) -> None:
    st = billing
    # a 14-day trial on the plan: Oct 1 -> Oct 15, then monthly from Oct 15
    await st.api.ok("POST", "/v1/plans", plan("jp", "JPY", "3000", "0.5", trial_days=14))
    await customer(st, "kenji", "JPY", "0.1")
    body = {"customer": "kenji", "plan": "jp", "start": z(OCT), "id": "s-k"}
    sub = await st.api.ok("POST", "/v1/subscriptions", body)
    assert sub["subscription_id"] == "s-k"
    view = await st.api.get("/v1/subscriptions/s-k")
    trial_end = OCT + 14 * DAY
    assert (view["trial_start"], view["trial_end"]) == (z(OCT), z(trial_end))
    assert view["current_period_end"] == z(trial_end)
    await tokens(st, "k1", "kenji", OCT + DAY, 400)  # in the trial
    await tokens(st, "k2", "kenji", OCT + 20 * DAY, 100)  # in the first paid period

    # trial_will_end: 3 days (the default) before Oct 15 is Oct 12 00:00
    await st.run_billing(trial_end - 3 * DAY - HOUR)
    assert "subscription.trial_will_end" not in await event_types(
        lifecycle_settings, sessions, "s-k"
    )
    await st.run_billing(trial_end - 3 * DAY)
    await st.run_billing(trial_end - 2 * DAY)  # a second run as of later: not again
    types = await event_types(lifecycle_settings, sessions, "s-k")
    assert types.count("subscription.trial_will_end") == 1

    [trial] = await finalized(st, trial_end + HOUR)
    assert (trial["period_start"], trial["period_end"]) == (z(OCT), z(trial_end))
    assert trial["kind"] == "subscription"
    # the flat fee prorated by 0; the 400 tokens shown (400 x 0.5 = 200 if billed) at 0
    assert (line(trial, "base")["amount"], line(trial, "base")["proration"]) == (0, "0")
    assert (line(trial, "tokens")["quantity"], line(trial, "tokens")["amount"]) == ("400", 0)
    assert (trial["subtotal"], trial["tax"], trial["total"], trial["status"]) == (
        0, 0, 0, "paid",
    )  # fmt: skip
    view = await st.api.get("/v1/subscriptions/s-k")
    assert (view["status"], view["current_period_start"]) == ("active", z(trial_end))
    assert view["current_period_end"] == z(trial_end.replace(month=11))  # anchored at Oct 15
    assert "subscription.updated" in await event_types(lifecycle_settings, sessions, "s-k")

    invoices = await finalized(st, trial_end.replace(month=11) + HOUR)
    paid = of_period(invoices, trial_end)
    # in full: 3000 + 100 x 0.5 = 3050; tax 10 % = 305; total 3355
    assert (line(paid, "base")["amount"], line(paid, "tokens")["amount"]) == (3000, 50)
    assert (paid["subtotal"], paid["tax"], paid["total"]) == (3050, 305, 3355)
    types = await event_types(lifecycle_settings, sessions, "s-k")
    assert types.count("subscription.trial_will_end") == 1


async def test_a_trial_that_cancels_ends_and_one_that_bills_usage_bills_only_the_usage(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok("POST", "/v1/plans", plan("kw", "KWD", "4.250", "0.001"))
    await st.api.ok("POST", "/v1/plans", plan("us", "USD", "10.00", "0.01"))
    await customer(st, "fahad", "KWD")
    await customer(st, "ana", "USD")
    week = OCT + 7 * DAY
    await st.api.ok("POST", "/v1/subscriptions", {
        "customer": "fahad", "plan": "kw", "start": z(OCT), "id": "s-f", "trial_end": z(week),
        "trial_end_behavior": "cancel",
    })  # fmt: skip
    await st.api.ok("POST", "/v1/subscriptions", {
        "customer": "ana", "plan": "us", "start": z(OCT), "id": "s-a", "trial_days": 10,
        "bill_trial_usage": True,
    })  # fmt: skip
    await tokens(st, "f1", "fahad", OCT + HOUR, 700)
    await tokens(st, "a1", "ana", OCT + HOUR, 500)

    invoices = await finalized(st, OCT + 10 * DAY + HOUR)
    fahad = next(i for i in invoices if i["customer"] == "fahad")
    # KWD: 700 x 0.001 = 0.700 = 700 fils, not billed in the trial; no flat fee
    assert (line(fahad, "tokens")["quantity"], line(fahad, "tokens")["amount"]) == ("700", 0)
    assert fahad["total"] == 0
    view = await st.api.get("/v1/subscriptions/s-f")
    assert (view["status"], view["ended_at"]) == ("ended", z(week))
    ana = next(i for i in invoices if i["customer"] == "ana")
    # bill_trial_usage: 500 x 0.01 = 5.00 = 500 cents; the flat fee still 0
    assert (line(ana, "base")["amount"], line(ana, "tokens")["amount"]) == (0, 500)
    assert (ana["period_end"], ana["total"]) == (z(OCT + 10 * DAY), 500)
    assert (await st.api.get("/v1/subscriptions/s-a"))["status"] == "active"

    # no trial: trial_days 0 overrides a plan's trial
    await st.api.ok("POST", "/v1/plans", plan("us-t", "USD", "10.00", "0.01", trial_days=30))
    await st.api.ok("POST", "/v1/subscriptions", {
        "customer": "ana", "plan": "us-t", "start": z(OCT), "id": "s-a2", "trial_days": 0,
    })  # fmt: skip
    view = await st.api.get("/v1/subscriptions/s-a2")
    assert (view["trial_end"], view["current_period_end"]) == (None, z(NOV))


async def test_an_immediate_upgrade_prorates_both_plans_to_the_second_and_splits_usage_at_the_hour(
    billing: Stack, lifecycle_settings: Settings, sessions: Sessions
) -> None:
    st = billing
    await st.api.ok("POST", "/v1/plans", plan("basic", "USD", "30.00", "0.001"))
    await st.api.ok("POST", "/v1/plans", plan("pro", "USD", "90.00", "0.002"))
    await customer(st, "bob", "USD")
    await st.api.ok("POST", "/v1/subscriptions",
                    {"customer": "bob", "plan": "basic", "start": z(NOV), "id": "s-b"})  # fmt: skip
    at = NOV + timedelta(days=10, hours=12, minutes=30)  # Nov 11 12:30 of a 30-day month
    await tokens(st, "b1", "bob", NOV + 4 * DAY, 1000)  # old plan
    await tokens(st, "b2", "bob", at - timedelta(minutes=20), 200)  # 12:10: old plan
    await tokens(st, "b3", "bob", at + timedelta(minutes=25), 300, 500)  # 12:55: hour of 'at'
    await tokens(st, "b4", "bob", at + timedelta(minutes=35), 500)  # 13:05: new plan

    changed = await st.api.ok("POST", "/v1/subscriptions/s-b/change-plan",
                              {"plan": "pro", "mode": "immediately", "at": z(at)})  # fmt: skip
    used = Decimal(10 * 86400 + 12 * 3600 + 30 * 60)  # 909000 s of 2592000
    assert Decimal(changed["proration"]) == used / Decimal(30 * 86400)
    assert Decimal(changed["proration"]) + Decimal(changed["new_proration"]) == 1
    assert changed["new_period_end"] == DEC.isoformat()  # the billing cycle is kept
    view = await st.api.get("/v1/subscriptions/s-b")
    assert (view["plan"], view["current_period_start"]) == ("pro", z(at))

    invoices = await finalized(st, DEC + HOUR)
    (
        old,
        new,
    ) = of_period(invoices, NOV), of_period(invoices, at)
    assert old["period_end"] == z(at)
    # basic: 30.00 x 909000 / 2592000 = 10.5208… -> 10.52; usage up to 13:00 (the end of
    # the hour of 'at'): 1000 + 200 + 300 = 1500 x 0.001 = 1.50; total 12.02
    assert (line(old, "base")["amount"], line(old, "tokens")["quantity"]) == (1052, "1500")
    assert (line(old, "tokens")["amount"], old["total"]) == (150, 1202)
    # pro: 90.00 x 1683000 / 2592000 = 58.4375 -> 58.44; usage from 13:00: 500 x 0.002 =
    # 1.00; total 59.44
    assert (line(new, "base")["amount"], line(new, "tokens")["quantity"]) == (5844, "500")
    assert (line(new, "tokens")["amount"], new["total"]) == (100, 5944)
    assert (new["period_start"], new["period_end"]) == (z(at), z(DEC))
    types = await event_types(lifecycle_settings, sessions, "s-b")
    assert types.count("subscription.updated") == 1

    # re-delivering every command changes nothing more (no second cut, invoice, event)
    await wait_outbox_drained(sessions)
    before = (await st.invoices(), await st.api.get("/v1/subscriptions"))
    events_before = len((await read_all(lifecycle_settings, topics.EVENTS_INVOICING))[0])
    await replay(
        lifecycle_settings,
        ReplayRequest(
            topic=topics.COMMANDS_INVOICING,
            into=topics.COMMANDS_INVOICING,
            start=parse_bound("earliest", "--from"),
            reason="test: replaying a plan change is harmless",
            actor="tests",
        ),
    )
    await wait_committed_to_end(
        lifecycle_settings, "billstream.invoicing.commands", topics.COMMANDS_INVOICING
    )
    await st.run_billing(DEC + HOUR)
    assert (await st.invoices(), await st.api.get("/v1/subscriptions")) == before
    await wait_outbox_drained(sessions)
    assert len((await read_all(lifecycle_settings, topics.EVENTS_INVOICING))[0]) == events_before


async def test_an_immediate_downgrade_and_a_change_during_a_trial(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/plans", plan("big", "JPY", "9000", "1"))
    await st.api.ok("POST", "/v1/plans", plan("small", "JPY", "3000", "1"))
    await customer(st, "yuki", "JPY")
    await customer(st, "rin", "JPY")
    await st.api.ok("POST", "/v1/subscriptions",
                    {"customer": "yuki", "plan": "big", "start": z(NOV), "id": "s-y"})  # fmt: skip
    await st.api.ok("POST", "/v1/subscriptions", {
        "customer": "rin", "plan": "big", "start": z(NOV), "id": "s-r", "trial_days": 14,
    })  # fmt: skip
    at = NOV + 20 * DAY  # 20 of 30 days used
    for who, when in (("s-y", at), ("s-r", NOV + 5 * DAY)):
        body = {"plan": "small", "mode": "immediately", "at": z(when)}
        await st.api.ok("POST", f"/v1/subscriptions/{who}/change-plan", body)

    invoices = await finalized(st, DEC + HOUR)
    yuki = [i for i in invoices if i["customer"] == "yuki"]
    # big: 9000 x 20/30 = 6000; small: 3000 x 10/30 = 1000 (together a month's worth)
    assert [line(i, "base")["amount"] for i in sorted(yuki, key=lambda i: i["period_start"])] == [
        6000, 1000,
    ]  # fmt: skip
    # rin changed on Nov 6 in her trial (to Nov 15): the trial goes on, on 'small'; both
    # parts bill 0; from Nov 15 'small' is billed monthly (Nov 15 - Dec 15 not closed yet)
    rin = sorted((i for i in invoices if i["customer"] == "rin"), key=lambda i: i["period_start"])
    assert [(i["period_start"], i["period_end"], i["total"]) for i in rin] == [
        (z(NOV), z(NOV + 5 * DAY), 0), (z(NOV + 5 * DAY), z(NOV + 14 * DAY), 0),
    ]  # fmt: skip
    view = await st.api.get("/v1/subscriptions/s-r")
    assert (view["plan"], view["current_period_start"]) == ("small", z(NOV + 14 * DAY))


async def test_bad_trials_and_plan_changes_are_refused_naming_the_field(billing: Stack) -> None:
    st = billing
    await st.api.ok("POST", "/v1/plans", plan("us", "USD", "10.00", "0.01"))
    await st.api.ok("POST", "/v1/plans", plan("eu", "EUR", "10.00", "0.01"))
    await customer(st, "ana", "USD")
    # at the door: 422 naming the field, nothing published
    cases = [
        ({"trial_days": 7, "trial_end": z(OCT + DAY)}, "trial_days"),
        ({"trial_end": z(OCT)}, "trial_end"),  # not after 'start'
        ({"trial_end": z(OCT + DAY + timedelta(minutes=30))}, "trial_end"),  # not a whole hour
        ({"trial_days": 731}, "trial_days"),
        ({"trial_end_behavior": "pause"}, "trial_end_behavior"),
    ]
    for extra, field in cases:
        body = {"customer": "ana", "plan": "us", "start": z(OCT)} | extra
        r = await st.api.send("POST", "/v1/subscriptions", body)
        assert r.status_code == 422, (extra, r.text)
        assert any(field in e["field"] for e in r.json()["errors"]), r.json()
    await st.api.ok("POST", "/v1/subscriptions",
                    {"customer": "ana", "plan": "us", "start": z(OCT), "id": "s-a"})  # fmt: skip
    r = await st.api.send("POST", "/v1/subscriptions/s-a/change-plan",
                          {"plan": "eu", "at": z(OCT + DAY)})  # fmt: skip
    assert r.status_code == 422  # 'at' goes with 'immediately' only
    # with state: the command fails naming the field, and nothing changes
    failures = [
        ({"plan": "eu", "mode": "immediately"}, "plan"),  # another currency
        ({"plan": "us", "mode": "immediately", "at": z(NOV + DAY)}, None),  # the same plan
    ]
    for body, field in failures:
        outcome = await st.api.command("POST", "/v1/subscriptions/s-a/change-plan", body)
        if field is None:
            assert outcome["result"]["effective_at"] is None  # nothing to change
        else:
            assert outcome["status"] == "failed"
            assert outcome["error"]["field"] == field, outcome
    await st.api.ok("POST", "/v1/plans", plan("us2", "USD", "20.00", "0.01"))
    body = {"plan": "us2", "mode": "immediately", "at": z(NOV + DAY)}
    outcome = await st.api.command("POST", "/v1/subscriptions/s-a/change-plan", body)
    assert (outcome["status"], outcome["error"]["field"]) == ("failed", "at")  # not in Oct
    view = await st.api.get("/v1/subscriptions/s-a")
    assert (view["plan"], view["current_period_start"]) == ("us", z(OCT))
    assert await st.invoices() == []

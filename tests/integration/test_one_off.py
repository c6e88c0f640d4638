"""One-off invoices end to end over HTTP: the real ingress, metering and invoicing workers,
the real broker and PostgreSQL. Every amount is computed by hand in the test (the tenant
rounds half-even, the default; docs/one-off-invoices.md has the same worked examples): each
line is quantity x unit price rounded ONCE to minor units, tax once per rate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import groups, topics
from schemas.one_off import CreateInvoice
from tests.conftest import TenantKey
from tests.integration.support import (
    Sessions,
    producer,
    read_all,
    wait_committed_to_end,
    wait_outbox_drained,
)
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.settings import Settings

YEAR = datetime.now(UTC).year


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"invoicing_tick_s": 0.1})
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        yield st


async def customer(st: Stack, id: str, currency: str, **extra: Any) -> None:
    await st.api.ok("POST", "/v1/customers", {"external_id": id, "name": id, "currency": currency}
                    | extra)  # fmt: skip


def line(description: str, quantity: str, unit_price: str, tax_rate: str | None = None,
         **extra: Any) -> dict[str, Any]:  # fmt: skip
    body = {"description": description, "quantity": quantity, "unit_price": unit_price}
    return body | ({"tax_rate": tax_rate} if tax_rate else {}) | extra


# JPY (exponent 0), the customer's rate 10 %:
#   room      2   x 12345.5 = 24691     -> 24691   (customer's 10 %)
#   breakfast 3   x 1333.5  = 4000.5    -> 4000    (half-even; its own 8 %)
#   checkout  1.5 x 1001    = 1501.5    -> 1502    (half-even; customer's 10 %)
#   subtotal 24691 + 4000 + 1502 = 30193
#   tax 10 % of (24691 + 1502 = 26193) = 2619.3 -> 2619; 8 % of 4000 = 320; tax 2939
#   total 30193 + 2939 = 33132
JPY_LINES = [
    line("Room, 2 nights", "2", "12345.5", item="room"),
    line("Breakfast", "3", "1333.5", "0.08", item="breakfast"),
    line("Late checkout", "1.5", "1001"),
]
JPY = ([24691, 4000, 1502], 30193, 2939, 33132)

# USD (exponent 2), the customer's rate 19 %:
#   setup     1   x 499.995 = 499.995   -> 49999.5 cents -> 50000 (half-even; 19 %)
#   training  2.5 x 80.333  = 200.8325  -> 20083.25     -> 20083 (its own 7 %)
#   printing  3   x 12.125  = 36.375    -> 3637.5       -> 3638  (half-even; 19 %)
#   subtotal 50000 + 20083 + 3638 = 73721
#   tax 19 % of 53638 = 10191.22 -> 10191; 7 % of 20083 = 1405.81 -> 1406; tax 11597
#   total 73721 + 11597 = 85318
USD_LINES = [
    line("Setup fee", "1", "499.995"),
    line("Training hours", "2.5", "80.333", "0.07"),
    line("Menu printing", "3", "12.125"),
]
USD = ([50000, 20083, 3638], 73721, 11597, 85318)

# BHD (exponent 3), the customer's rate 10 %:
#   tour      3 x 1.23455   = 3.70365   -> 3703.65 fils -> 3704 (10 %)
#   guide     1 x 25.0005   = 25.0005   -> 25000.5      -> 25000 (half-even; its own 5 %)
#   water     7 x 0.1235    = 0.8645    -> 864.5        -> 864   (half-even; its own 5 %)
#   subtotal 3704 + 25000 + 864 = 29568
#   tax 10 % of 3704 = 370.4 -> 370; 5 % of 25864 = 1293.2 -> 1293; tax 1663
#   total 29568 + 1663 = 31231
BHD_LINES = [
    line("Desert tour", "3", "1.23455"),
    line("Guide", "1", "25.0005", "0.05"),
    line("Water", "7", "0.1235", "0.05"),
]
BHD = ([3704, 25000, 864], 29568, 1663, 31231)


async def create(st: Stack, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = await st.api.http.post("/v1/invoices", json=body, headers=st.api.auth | headers)
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out


async def outcome(st: Stack, accepted: dict[str, Any]) -> dict[str, Any]:
    return await st.api.outcome(accepted["command_id"])


async def invoice(st: Stack, id: str) -> dict[str, Any]:
    body: dict[str, Any] = await st.api.get(f"/v1/invoices/{id}")
    return body


def check(inv: dict[str, Any], expected: tuple[list[int], int, int, int]) -> None:
    amounts, subtotal, tax, total = expected
    assert [ln["amount"] for ln in inv["lines"]] == amounts
    assert (inv["subtotal"], inv["discount"], inv["tax"], inv["total"]) == (
        subtotal, 0, tax, total,
    )  # fmt: skip
    assert sum(amounts) + tax == total  # each line once, tax once per rate
    assert inv["kind"] == "one_off" and inv.get("subscription_id") is None
    assert {ln["kind"] for ln in inv["lines"]} == {"one_off"}


async def events(st: Stack) -> list[dict[str, Any]]:
    records, _ = await read_all(st.settings, topics.EVENTS_INVOICING)
    return [json.loads(r.value) for r in records]


async def test_one_off_invoices_in_three_exponents_draft_finalize_and_auto_finalize(
    billing: Stack,
) -> None:
    st = billing
    await customer(st, "ryokan", "JPY", tax_rate="0.1", net_terms_days=14)
    await customer(st, "bistro", "USD", tax_rate="0.19")
    await customer(st, "souq", "BHD", tax_rate="0.1")

    # JPY: a draft, then finalized
    jp = await create(st, {"customer": "ryokan", "lines": JPY_LINES, "memo": "Booking 4711"})
    assert (await outcome(st, jp))["result"]["status"] == "draft"
    draft = await invoice(st, jp["invoice_id"])
    assert (draft["status"], draft["number"], draft["currency"]) == ("draft", None, "JPY")
    assert draft["memo"] == "Booking 4711"
    assert [ln["price_key"] for ln in draft["lines"]] == ["room", "breakfast", "one_off"]
    assert [ln["tax_rate"] for ln in draft["lines"]] == [None, "0.08", None]
    check(draft, JPY)
    done = await st.api.ok("POST", f"/v1/invoices/{jp['invoice_id']}/finalize", {})
    assert done["number"] == f"INV-{YEAR}-000001"
    inv = await invoice(st, jp["invoice_id"])
    check(inv, JPY)
    assert (inv["status"], inv["amount_due"]) == ("finalized", 33132)
    finalized_at = datetime.fromisoformat(inv["finalized_at"])
    assert datetime.fromisoformat(inv["due_at"]) == finalized_at + timedelta(days=14)

    # USD: finalized at once
    us = await create(st, {"customer": "bistro", "lines": USD_LINES, "finalize": True})
    result = (await outcome(st, us))["result"]
    assert (result["status"], result["number"], result["total"]) == (
        "finalized", f"INV-{YEAR}-000002", 85318,
    )  # fmt: skip
    check(await invoice(st, us["invoice_id"]), USD)

    # BHD: a draft, then finalized
    bh = await create(st, {"customer": "souq", "currency": "BHD", "lines": BHD_LINES})
    await outcome(st, bh)
    check(await invoice(st, bh["invoice_id"]), BHD)
    done = await st.api.ok("POST", f"/v1/invoices/{bh['invoice_id']}/finalize", {})
    assert done["number"] == f"INV-{YEAR}-000003"
    # finalizing again: nothing changes
    again = await st.api.ok("POST", f"/v1/invoices/{bh['invoice_id']}/finalize", {})
    assert (again["number"], again["replayed"]) == (f"INV-{YEAR}-000003", True)

    # the events: created (draft) then finalized with the amount due, which payments
    # collects (workers/payments/handlers.py on_invoice: invoice.finalized, amount_due > 0)
    async def all_events() -> list[dict[str, Any]] | None:
        got = [e for e in await events(st) if e["type"].startswith("invoice.")]
        return got if len(got) >= 6 else None

    got = await wait_for(all_events, timeout_s=20)
    seen = sorted((e["data"]["invoice_id"], e["type"]) for e in got)
    assert seen == sorted(
        (i, t) for i in (jp["invoice_id"], us["invoice_id"], bh["invoice_id"])
        for t in ("invoice.created", "invoice.finalized")
    )  # fmt: skip
    due = {
        e["data"]["invoice_id"]: (e["data"]["kind"], e["data"]["amount_due"])
        for e in got
        if e["type"] == "invoice.finalized"
    }
    assert due == {
        jp["invoice_id"]: ("one_off", 33132),
        us["invoice_id"]: ("one_off", 85318),
        bh["invoice_id"]: ("one_off", 31231),
    }
    assert all("subscription_id" not in e["data"] for e in got)


async def test_a_retried_request_bills_once(billing: Stack) -> None:
    st = billing
    await customer(st, "bistro", "USD", tax_rate="0.19")
    body = {"customer": "bistro", "lines": USD_LINES, "finalize": True}

    # the header: a retry gets the first answer (the same command, the same invoice)
    first = await create(st, body, **{"Idempotency-Key": "booking-1"})
    second = await create(st, body, **{"Idempotency-Key": "booking-1"})
    assert second == first
    assert (await outcome(st, first))["result"]["number"] == f"INV-{YEAR}-000001"
    # the same key with another body: refused at the door
    other = body | {"memo": "something else"}
    r = await st.api.http.post(
        "/v1/invoices", json=other, headers=st.api.auth | {"Idempotency-Key": "booking-1"}
    )
    assert r.status_code == 422 and r.json()["type"].endswith("idempotency_key_reused"), r.text

    # the body's key (no header): the invoice id comes from the key, so every retry names
    # the same invoice; the second command writes nothing and says so
    keyed = body | {"idempotency_key": "booking-2"}
    a = await create(st, keyed)
    b = await create(st, keyed)
    assert a["invoice_id"] == b["invoice_id"] and a["command_id"] != b["command_id"]
    ra, rb = (await outcome(st, a))["result"], (await outcome(st, b))["result"]
    assert ra["replayed"] is False and rb["replayed"] is True
    assert ra["number"] == rb["number"] == f"INV-{YEAR}-000002"
    # the same key with other content: the command fails, naming the key
    c = await create(st, keyed | {"lines": USD_LINES[:2]})
    failed = await outcome(st, c)
    assert failed["status"] == "failed", failed
    assert (failed["error"]["code"], failed["error"]["field"]) == ("conflict", "idempotency_key")
    invoices = await st.invoices(customer="bistro")
    assert sorted(i["number"] for i in invoices) == [f"INV-{YEAR}-00000{k}" for k in (1, 2)]


async def test_billing_runs_leave_one_off_drafts_alone_and_share_their_numbers(
    billing: Stack,
) -> None:
    st = billing
    await customer(st, "ryokan", "JPY", tax_rate="0.1")
    plan = {
        "key": "basic", "name": "Basic", "currency": "JPY", "interval": "month",
        "prices": [{"kind": "flat", "key": "base", "name": "Base fee", "amount": "1000"}],
    }  # fmt: skip
    await st.api.ok("POST", "/v1/plans", plan)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = (now.replace(day=1) - timedelta(days=40)).replace(day=1)  # two periods ended

    before = await create(st, {"customer": "ryokan", "lines": JPY_LINES, "finalize": True})
    assert (await outcome(st, before))["result"]["number"] == f"INV-{YEAR}-000001"
    draft = await create(st, {"customer": "ryokan", "lines": JPY_LINES})
    await outcome(st, draft)
    await st.api.ok(
        "POST", "/v1/subscriptions", {"customer": "ryokan", "plan": "basic",
                                      "start": start.isoformat()}
    )  # fmt: skip
    run = await st.run_billing(now + timedelta(hours=2))
    assert run["drafts_waiting"] == 0  # the one-off draft is not waiting for a run

    async def both_finalized() -> list[dict[str, Any]] | None:
        subs = [i for i in await st.invoices(customer="ryokan") if i["kind"] == "subscription"]
        done = len(subs) == 2 and all(i["status"] == "finalized" for i in subs)
        return subs if done else None

    await wait_for(both_finalized, timeout_s=20)
    assert (await invoice(st, draft["invoice_id"]))["status"] == "draft"  # left alone
    after = await st.api.ok("POST", f"/v1/invoices/{draft['invoice_id']}/finalize", {})
    assert after["number"] == f"INV-{YEAR}-000004"  # after the run's two
    numbers = sorted(i["number"] for i in await st.invoices(customer="ryokan"))
    assert numbers == [f"INV-{YEAR}-00000{k}" for k in range(1, 5)]  # one gapless sequence

    # a subscription's invoice is not finalized by the command
    sub_invoice = next(
        i for i in await st.invoices(customer="ryokan") if i["kind"] == "subscription"
    )
    r = await st.api.command("POST", f"/v1/invoices/{sub_invoice['invoice_id']}/finalize", {})
    assert (r["status"], r["error"]["code"]) == ("failed", "conflict"), r


async def test_void_a_one_off_draft(billing: Stack) -> None:
    st = billing
    await customer(st, "souq", "BHD", tax_rate="0.1")
    d = await create(st, {"customer": "souq", "lines": BHD_LINES})
    await outcome(st, d)
    r = await st.api.ok("POST", f"/v1/invoices/{d['invoice_id']}/void", {"reason": "cancelled"})
    assert r["status"] == "void"
    inv = await invoice(st, d["invoice_id"])
    assert (inv["status"], inv["number"], inv["status_reason"]) == ("void", None, "cancelled")
    refused = await st.api.command("POST", f"/v1/invoices/{d['invoice_id']}/finalize", {})
    assert (refused["status"], refused["error"]["code"]) == ("failed", "invalid_transition")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lines": [line("x", "1", "1") | {"quantity": 1.5}]}, "quantity"),
        ({"lines": [line("x", "-1", "1")]}, "quantity"),
        ({"lines": [line("x", "0", "1")]}, "quantity"),
        ({"lines": [line("x", "1", "-1")]}, "unit_price"),
        ({"lines": [line("x", "1", "1", "1.5")]}, "tax_rate"),
        ({"lines": []}, "lines"),
        ({"lines": [line("x", "1", "1")] * 251}, "lines"),
        ({"currency": "EUR"}, "currency"),
    ],
)
async def test_the_door_refuses_what_it_can_check(
    billing: Stack, change: dict[str, Any], field: str
) -> None:
    st = billing
    await customer(st, "bistro", "USD")
    body = {"customer": "bistro", "lines": [line("x", "1", "1")]} | change
    r = await st.api.send("POST", "/v1/invoices", body)
    assert r.status_code == 422, r.text
    assert field in r.text
    r = await st.api.send("POST", "/v1/invoices", body | {"customer": "nobody"})
    assert r.status_code in (404, 422), r.text
    r = await st.api.send("POST", "/v1/invoices", {"customer": "nobody", "lines": USD_LINES})
    assert r.status_code == 404, r.text
    r = await st.api.send("POST", "/v1/invoices/nothing-here/finalize", {})
    assert r.status_code == 404, r.text


async def test_a_redelivered_command_creates_no_second_invoice(
    billing: Stack, sessions: Sessions
) -> None:
    st = billing
    await customer(st, "bistro", "USD", tax_rate="0.19")
    a = await create(st, {"customer": "bistro", "lines": USD_LINES, "finalize": True})
    await outcome(st, a)
    records, _ = await read_all(st.settings, topics.COMMANDS_INVOICING)
    [sent] = [r for r in records if json.loads(r.value)["type"] == "CreateInvoice"]
    command = CreateInvoice.model_validate_json(sent.value)
    copy = command.model_copy(update={"id": "a-fresh-envelope-id"})  # past the inbox too
    async with producer(st.settings) as p:
        await p.send_and_wait(topics.COMMANDS_INVOICING, sent.value, key=sent.key)
        await p.send_and_wait(topics.COMMANDS_INVOICING, copy.to_json(), key=sent.key)

    # both handled: the exact copy dropped by the inbox, the fresh one by the invoice's id
    await wait_committed_to_end(st.settings, groups.INVOICING_COMMANDS, topics.COMMANDS_INVOICING)
    await wait_outbox_drained(sessions)
    invoices = await st.invoices(customer="bistro")
    assert [(i["invoice_id"], i["number"]) for i in invoices] == [
        (a["invoice_id"], f"INV-{YEAR}-000001")
    ]
    got = sorted(e["type"] for e in await events(st) if e["type"].startswith("invoice."))
    assert got == ["invoice.created", "invoice.finalized"]


async def test_prepaid_credits_pay_a_one_off_invoice_and_a_total_of_0_is_paid(
    billing: Stack,
) -> None:
    st = billing
    await customer(st, "bistro", "USD")  # no tax
    r = await st.api.command(
        "POST", "/v1/customers/bistro/credits/grants", {"id": "promo", "amount": 1000}
    )
    assert r["status"] == "succeeded", r
    # 2 x 12.50 = 25.00 = 2500 cents; the grant pays 1000 of it: 1500 due
    a = await create(st, {"customer": "bistro", "lines": [line("Catering", "2", "12.50")]})
    await outcome(st, a)
    done = await st.api.ok("POST", f"/v1/invoices/{a['invoice_id']}/finalize", {})
    assert (done["status"], done["total"], done["amount_due"]) == ("finalized", 1500, 1500)
    inv = await invoice(st, a["invoice_id"])
    assert [(ln["kind"], ln["amount"]) for ln in inv["lines"]] == [
        ("one_off", 2500), ("credit", -1000),
    ]  # fmt: skip
    assert (inv["subtotal"], inv["credits"], inv["total"]) == (2500, 1000, 1500)

    # a free line: 3 x 0 = 0, finalized and paid at once
    b = await create(st, {"customer": "bistro", "finalize": True,
                          "lines": [line("Tasting", "3", "0")]})  # fmt: skip
    result = (await outcome(st, b))["result"]
    assert (result["status"], result["total"], result["amount_due"]) == ("paid", 0, 0)

    async def paid_event() -> bool:
        return any(
            e["type"] == "invoice.paid" and e["data"]["invoice_id"] == b["invoice_id"]
            for e in await events(st)
        )

    await wait_for(paid_event, timeout_s=20)

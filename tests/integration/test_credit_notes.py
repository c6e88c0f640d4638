"""Credit notes end to end over HTTP: real ingress, metering, invoicing and payments workers,
the real broker and PostgreSQL. Every amount is computed by hand in the test
(docs/credit-notes.md has the same worked examples). Periods are in 2031 so the scheduler's
own runs (as of now) never touch them; notes are numbered in the year they are issued."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import topics
from tests.conftest import TenantKey
from tests.integration.support import producer, read_all
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.payments.app import build as build_payments
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def plan(key: str, currency: str, flat: str) -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "currency": currency,
        "interval": "month",
        "prices": [{"kind": "flat", "key": "base", "name": "Base fee", "amount": flat}],
    }


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"invoicing_tick_s": 0.1, "payments_tick_s": 0.1})
    async with stack(s, tenant, build_metering(s), build_invoicing(s), build_payments(s)) as st:
        yield st


async def invoice(st: Stack, who: str, currency: str, tax_rate: str, flat: str) -> dict[str, Any]:
    """A customer on a one-price plan, billed for October 2031: its finalized invoice."""
    await st.api.ok(
        "POST",
        "/v1/customers",
        {"external_id": who, "name": who, "currency": currency, "tax_rate": tax_rate},
    )
    await st.api.ok("POST", "/v1/plans", plan(f"p-{who}", currency, flat))
    sub = await st.api.ok(
        "POST", "/v1/subscriptions",
        {"customer": who, "plan": f"p-{who}", "start": OCT.isoformat()},
    )  # fmt: skip
    await st.run_billing(NOV + HOUR)
    [row] = await st.invoices(subscription_id=sub["subscription_id"])
    body: dict[str, Any] = await st.api.get(f"/v1/invoices/{row['invoice_id']}")
    assert body["status"] == "finalized", body
    return body


async def note(st: Stack, invoice_id: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await st.api.send("POST", f"/v1/invoices/{invoice_id}/credit-notes", body)
    assert r.status_code == 202, r.text
    outcome = await st.api.outcome(r.json()["command_id"])
    return outcome | {"credit_note_id": r.json()["credit_note_id"]}


async def pay_offline(st: Stack, invoice_id: str, amount: int) -> None:
    await st.api.ok(
        "POST", f"/v1/invoices/{invoice_id}/offline-payments",
        {"amount": amount, "method": "bank_transfer"},
    )  # fmt: skip

    async def paid() -> bool:
        return (await st.api.get(f"/v1/invoices/{invoice_id}"))["status"] == "paid"

    await wait_for(paid, timeout_s=20)


async def wait_invoice(st: Stack, invoice_id: str, check: Any) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        body: dict[str, Any] = await st.api.get(f"/v1/invoices/{invoice_id}")
        return body if check(body) else None

    result: dict[str, Any] = await wait_for(ready, timeout_s=30)
    return result


async def test_notes_reduce_the_amount_due_then_pay_refund_numbered_without_gaps(
    billing: Stack,
) -> None:
    st = billing
    year = datetime.now(UTC).year
    # USD (exponent 2), 10 %: 100.00 + 10.00 tax = 110.00
    usd = await invoice(st, "ana", "USD", "0.1", "100.00")
    assert (usd["subtotal"], usd["tax"], usd["total"], usd["amount_due"]) == (
        10000,
        1000,
        11000,
        11000,
    )

    # a partial line note: 25.00 of the base fee + 10 % = 27.50 off the amount due
    first = await note(st, usd["invoice_id"], {"reason": "order_change",
                                               "lines": [{"line": 0, "amount": 2500}]})  # fmt: skip
    assert first["status"] == "succeeded", first
    assert first["result"] | {} == first["result"]
    assert (first["result"]["number"], first["result"]["total"],
            first["result"]["amount_reducing_due"], first["result"]["refund_amount"]) == (
        f"CN-{year}-000001", 2750, 2750, 0,
    )  # fmt: skip
    inv = await st.api.get(f"/v1/invoices/{usd['invoice_id']}")
    # 110.00 - 27.50 = 82.50 still due; the invoice itself is unchanged
    assert (inv["status"], inv["amount_credited"], inv["amount_due"], inv["total"]) == (
        "finalized", 2750, 8250, 11000,
    )  # fmt: skip
    assert inv["lines"] == usd["lines"]

    # over-crediting is refused: 75.00 left of the base fee; 75.01 asked. Nothing is
    # written and no number is used.
    refused = await note(
        st, usd["invoice_id"], {"reason": "other", "lines": [{"line": 0, "amount": 7501}]}
    )
    assert refused["status"] == "failed", refused
    assert refused["error"]["code"] == "conflict"
    assert "lines[0].amount" in json.dumps(refused["error"])

    # the rest by amount, tax included: 82.50 * 0.1 / 1.1 = 7.50 tax, 75.00 net -> paid
    second = await note(st, usd["invoice_id"], {"reason": "duplicate", "amount": 8250})
    assert second["status"] == "succeeded", second
    assert (second["result"]["number"], second["result"]["amount_reducing_due"]) == (
        f"CN-{year}-000002", 8250,
    )  # fmt: skip
    cn = await st.api.get(f"/v1/credit-notes/{second['credit_note_id']}")
    assert (cn["subtotal"], cn["tax"], cn["total"], cn["status"]) == (7500, 750, 8250, "issued")
    assert cn["invoice_number"] == usd["number"] and cn["customer"] == "ana"
    inv = await st.api.get(f"/v1/invoices/{usd['invoice_id']}")
    assert (inv["status"], inv["amount_credited"], inv["amount_due"]) == ("paid", 11000, 0)
    # nothing is left: one more minor unit is refused
    nothing = await note(st, usd["invoice_id"], {"reason": "other", "amount": 1})
    assert nothing["status"] == "failed" and nothing["error"]["code"] == "conflict", nothing
    # an invoice with notes cannot be voided
    voided = await st.api.command("POST", f"/v1/invoices/{usd['invoice_id']}/void", {})
    assert voided["status"] == "failed", voided

    # JPY (exponent 0), 8 %: 1000 + 80 = 1080, paid offline; a note of 500 + 8 % = 540 is
    # refunded (nothing is due) through payments
    jpy = await invoice(st, "ken", "JPY", "0.08", "1000")
    assert (jpy["subtotal"], jpy["tax"], jpy["total"]) == (1000, 80, 1080)
    await pay_offline(st, jpy["invoice_id"], 1080)
    third = await note(st, jpy["invoice_id"], {"reason": "product_unsatisfactory",
                                               "lines": [{"line": 0, "amount": 500}]})  # fmt: skip
    assert third["status"] == "succeeded", third
    # numbers stay gapless across invoices and after the refused commands
    assert (
        third["result"]["number"],
        third["result"]["total"],
        third["result"]["refund_amount"],
    ) == (
        f"CN-{year}-000003",
        540,
        540,
    )
    inv = await wait_invoice(st, jpy["invoice_id"], lambda b: b["amount_refunded"] == 540)
    refunds = [p for p in inv["payments"] if p["method"] == "refund"]
    assert [p["amount"] for p in refunds] == [-540]
    assert (inv["status"], inv["amount_credited"], inv["amount_paid"]) == ("paid", 0, 1080)

    listed = await st.api.get("/v1/credit-notes", customer="ana")
    assert sorted(n["number"] for n in listed) == [f"CN-{year}-000001", f"CN-{year}-000002"]
    by_invoice = await st.api.get("/v1/credit-notes", invoice=jpy["invoice_id"])
    assert [n["credit_note_id"] for n in by_invoice] == [third["credit_note_id"]]

    # the events carry the whole note
    records, _ = await read_all(st.settings, topics.EVENTS_INVOICING)
    issued = [json.loads(r.value) for r in records]
    issued = [e["data"] for e in issued if e["type"] == "credit_note.issued"]
    assert [(d["number"], d["total"]) for d in issued] == [
        (f"CN-{year}-000001", 2750), (f"CN-{year}-000002", 8250), (f"CN-{year}-000003", 540),
    ]  # fmt: skip


async def test_settle_credit_grants_the_balance_and_a_note_can_be_voided(billing: Stack) -> None:
    st = billing
    # BHD (exponent 3), 5 %: 10.000 + 0.500 = 10.500, paid offline
    bhd = await invoice(st, "zain", "BHD", "0.05", "10.000")
    assert (bhd["subtotal"], bhd["tax"], bhd["total"]) == (10000, 500, 10500)
    await pay_offline(st, bhd["invoice_id"], 10500)
    # 2.100 tax included: 2.100 * 0.05 / 1.05 = 0.100 tax, 2.000 net; all of it to the
    # customer's credit balance
    cn = await note(st, bhd["invoice_id"], {"reason": "other", "amount": 2100, "settle": "credit",
                                            "memo": "goodwill"})  # fmt: skip
    assert cn["status"] == "succeeded", cn
    assert (cn["result"]["amount_credited_to_balance"], cn["result"]["refund_amount"]) == (2100, 0)
    view = await st.api.get(f"/v1/credit-notes/{cn['credit_note_id']}")
    assert (view["subtotal"], view["tax"], view["memo"]) == (2000, 100, "goodwill")
    grant = await st.api.get(f"/v1/credit-grants/{view['grant_id']}")
    assert (grant["amount"], grant["balance"], grant["source"]) == (2100, 2100, "credit_note")

    # voided (its credit unused): the grant is voided, the note keeps its number
    voided = await st.api.command("POST", f"/v1/credit-notes/{cn['credit_note_id']}/void",
                                  {"reason": "issued by mistake"})  # fmt: skip
    assert voided["status"] == "succeeded", voided
    view = await st.api.get(f"/v1/credit-notes/{cn['credit_note_id']}")
    assert (view["status"], view["void_reason"], view["number"]) == (
        "void", "issued by mistake", cn["result"]["number"],
    )  # fmt: skip
    grant = await st.api.get(f"/v1/credit-grants/{view['grant_id']}")
    assert (grant["balance"], grant["status"]) == (0, "voided")

    # KWD (exponent 3), 0 % tax... an unpaid invoice: a note takes 3.250 off its amount due,
    # voiding it makes 3.250 due again
    kwd = await invoice(st, "fahad", "KWD", "0", "12.500")
    assert (kwd["total"], kwd["amount_due"]) == (12500, 12500)
    k = await note(st, kwd["invoice_id"], {"reason": "order_change",
                                           "lines": [{"line": 0, "amount": 3250}]})  # fmt: skip
    assert k["status"] == "succeeded", k
    inv = await st.api.get(f"/v1/invoices/{kwd['invoice_id']}")
    assert inv["amount_due"] == 12500 - 3250 == 9250
    undone = await st.api.command("POST", f"/v1/credit-notes/{k['credit_note_id']}/void", {})
    assert undone["status"] == "succeeded", undone
    inv = await st.api.get(f"/v1/invoices/{kwd['invoice_id']}")
    assert (inv["amount_credited"], inv["amount_due"]) == (0, 12500)
    # a void note counts no more: the whole line can be credited again
    again = await note(
        st, kwd["invoice_id"], {"reason": "other", "lines": [{"line": 0, "amount": 12500}]}
    )
    assert again["status"] == "succeeded", again


async def test_bad_notes_are_refused_at_the_door(billing: Stack) -> None:
    st = billing
    inv = await invoice(st, "bo", "EUR", "0.19", "50.00")
    path = f"/v1/invoices/{inv['invoice_id']}/credit-notes"
    line = {"line": 0, "amount": 100}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"reason": "other"}, "lines"),
        ({"reason": "other", "amount": 100, "lines": [line]}, "lines"),
        ({"reason": "other", "amount": 10.5}, "amount"),
        ({"reason": "other", "amount": "100"}, "amount"),
        ({"reason": "other", "amount": 0}, "amount"),
        ({"reason": "other", "lines": [{"line": 0, "amount": 1.5}]}, "lines"),
        ({"reason": "other", "lines": [line, line]}, "lines[1].line"),
        ({"reason": "other", "lines": [{"line": i, "amount": 1} for i in range(101)]}, "lines"),
        ({"reason": "because", "amount": 100}, "reason"),
        ({"reason": "other", "amount": 100, "settle": "cash"}, "settle"),
    ]
    for body, field in cases:
        r = await st.api.send("POST", path, body)
        assert r.status_code == 422, (body, r.text)
        assert any(field in e["field"] for e in r.json()["errors"]), (body, r.text)
    r = await st.api.send(
        "POST", "/v1/invoices/nope/credit-notes", {"reason": "other", "amount": 1}
    )
    assert r.status_code == 404, r.text
    r = await st.api.send("GET", "/v1/credit-notes/nope", None)
    assert r.status_code == 404, r.text
    assert await st.api.get("/v1/credit-notes", invoice=inv["invoice_id"]) == []


async def test_a_replayed_command_issues_one_note_and_refunds_once(billing: Stack) -> None:
    st = billing
    # IDR (exponent 2), 11 %: Rp 150,000.00 + Rp 16,500.00 = Rp 166,500.00, paid offline
    idr = await invoice(st, "kopi", "IDR", "0.11", "150000")
    assert idr["total"] == 16_650_000
    await pay_offline(st, idr["invoice_id"], 16_650_000)
    # Rp 50,000.00 of the line + 11 % = Rp 55,500.00 refunded
    cn = await note(
        st,
        idr["invoice_id"],
        {"id": "cn-replay", "reason": "duplicate", "lines": [{"line": 0, "amount": 5_000_000}]},
    )
    assert cn["status"] == "succeeded" and cn["result"]["refund_amount"] == 5_550_000, cn
    await wait_invoice(st, idr["invoice_id"], lambda b: b["amount_refunded"] == 5_550_000)

    records, _ = await read_all(st.settings, topics.COMMANDS_INVOICING)
    [record] = [r for r in records if json.loads(r.value)["type"] == "IssueCreditNote"]
    async with producer(st.settings) as p:
        await p.send_and_wait(topics.COMMANDS_INVOICING, record.value, key=record.key)
    # a command after it on the same key: once it is done, the replayed one was handled
    marker = await st.api.command(
        "POST", "/v1/customers",
        {"external_id": "kopi", "name": "Kopi Kenangan", "currency": "IDR", "tax_rate": "0.11"},
    )  # fmt: skip
    assert marker["status"] == "succeeded", marker
    notes = await st.api.get("/v1/credit-notes", invoice=idr["invoice_id"])
    assert [n["credit_note_id"] for n in notes] == ["cn-replay"]
    # and the refund was made once: wait for the payments worker to have read everything
    inv = await st.api.get(f"/v1/invoices/{idr['invoice_id']}")
    assert inv["amount_refunded"] == 5_550_000
    assert [p["amount"] for p in inv["payments"] if p["method"] == "refund"] == [-5_550_000]
    records, _ = await read_all(st.settings, topics.EVENTS_INVOICING)
    types = [json.loads(r.value)["type"] for r in records]
    assert types.count("credit_note.issued") == 1


async def test_prepaid_credits_go_back_to_their_grants_before_cash_is_refunded(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok(
        "POST", "/v1/customers",
        {"external_id": "warung", "name": "Warung", "currency": "USD", "tax_rate": "0.1"},
    )  # fmt: skip
    r = await st.api.command(
        "POST", "/v1/customers/warung/credits/grants",
        {"id": "promo", "amount": 3000, "effective_at": OCT.isoformat()},
    )  # fmt: skip
    assert r["status"] == "succeeded", r
    await st.api.ok("POST", "/v1/plans", plan("p-warung", "USD", "100.00"))
    sub = await st.api.ok(
        "POST", "/v1/subscriptions",
        {"customer": "warung", "plan": "p-warung", "start": OCT.isoformat()},
    )  # fmt: skip
    await st.run_billing(NOV + HOUR)
    [row] = await st.invoices(subscription_id=sub["subscription_id"])
    inv = await st.api.get(f"/v1/invoices/{row['invoice_id']}")
    # 100.00 + 10.00 tax = 110.00; 30.00 of credits pay it first: 80.00 due, paid offline
    assert (inv["subtotal"], inv["tax"], inv["credits"], inv["total"]) == (10000, 1000, 3000, 8000)
    await pay_offline(st, inv["invoice_id"], 8000)
    # 50.00 tax included: nothing is due; 30.00 back to the grant, then 20.00 refunded
    cn = await note(st, inv["invoice_id"], {"reason": "other", "amount": 5000})
    assert cn["status"] == "succeeded", cn
    r = cn["result"]
    assert (r["amount_reducing_due"], r["amount_credits_returned"], r["refund_amount"]) == (
        0, 3000, 2000,
    )  # fmt: skip
    await wait_invoice(st, inv["invoice_id"], lambda b: b["amount_refunded"] == 2000)
    later = (NOV + 3 * HOUR).isoformat()
    credits = await st.api.get("/v1/customers/warung/credits", as_of=later)
    assert credits["balance"] == 3000
    ledger = await st.api.get("/v1/customers/warung/credits/ledger")
    assert [(e["kind"], e["amount"]) for e in ledger] == [
        ("granted", 3000), ("applied", -3000), ("reversed", 3000),
    ]  # fmt: skip
    # what is left to credit: 110.00 - 50.00 = 60.00; all of it is cash (80.00 paid, 20.00
    # given back): 60.01 is refused
    more = await note(st, inv["invoice_id"], {"reason": "other", "amount": 6001})
    assert more["status"] == "failed" and more["error"]["field"] == "amount", more
    # a note that refunded money cannot be voided
    voided = await st.api.command("POST", f"/v1/credit-notes/{cn['credit_note_id']}/void", {})
    assert voided["status"] == "failed" and voided["error"]["code"] == "conflict", voided

"""The partners HTTP API: real ingress (uvicorn), the invoicing and partners workers, real
broker and PostgreSQL. What the door refuses (422 naming the field, 404 for an unknown
partner, customer or statement) and publishes (202 and the command); the reads after the
commands succeeded; a commission accrued from a paid invoice, its statement and payouts;
another tenant's partners and statements are 404.

And the worked examples of docs/partners.md, computed by the partners service exactly as
the document computes them by hand (each test names the document's section and finds its
numbers there)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas import topics
from schemas.invoicing import InvoiceData, InvoiceLine, InvoicePaid
from schemas.partners import CommissionRuleSpec, period_bounds, period_of
from schemas.payments import PaymentRefunded, RefundData
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.support import Sessions, producer, topic_size
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.partners import service
from workers.partners.app import build as build_partners
from workers.settings import Settings

PROBLEM = "application/problem+json"
DOC = Path(__file__).resolve().parents[2] / "docs" / "partners.md"

ALICE = {"external_id": "alice", "name": "Alice Travel", "currency": "USD", "tax_rate": "0.1"}
SAKURA = {
    "partner_id": "sakura",
    "name": "Sakura Travel KK",
    "tier": "agent",
    "email": "billing@sakura.example",
}
DEFAULT_RULE: dict[str, Any] = {"key": "agent-default", "partner_tier": "agent", "kind": "percent",
                "percent": "0.125"}  # fmt: skip


# --- the worked examples of docs/partners.md ------------------------------------------------


def section(title: str) -> str:
    """The text of the document's section whose heading starts with ``title``."""
    text = DOC.read_text()
    m = re.search(rf"^#+ {re.escape(title)}.*?$(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert m, f"docs/partners.md has no section {title!r}"
    return m[1]


def shown(title: str, *numbers: int) -> None:
    """Each of ``numbers`` is shown in bold in the section (as the document states it, a
    negative one with a minus sign, U+2212)."""
    body = section(title)
    for n in numbers:
        text = f"\u2212{-n}" if n < 0 else str(n)
        assert f"**{text}**" in body, f"{text} is not in section {title!r}"


def rule(**spec: Any) -> service.Rule:
    return service.rule_of(CommissionRuleSpec.model_validate(spec))


def invoice(
    currency: str, total: int, tax: int, lines: list[tuple[str, int]], *, plan: str | None = None
) -> service.PaidInvoice:
    return service.PaidInvoice(
        invoice_id=f"in-{total}", currency=currency, total=total, tax=tax, amount_paid=total,
        plan=plan, lines=tuple(lines),
    )  # fmt: skip


def amounts(result: service.Accrued) -> dict[str, int]:
    return {a.rule.key: a.amount for a in result.accruals}


def test_example_a_percent_rules_on_an_invoice_with_tax_a_discount_and_credits() -> None:
    rules = [
        rule(key="api-20", partner_tier="gold", product="api_calls", kind="percent",
             percent="0.2"),
        rule(key="pro-12", partner_tier="gold", plan="pro", kind="percent", percent="0.12"),
        rule(key="gold-10", partner_tier="gold", kind="percent", percent="0.1"),
    ]  # fmt: skip
    # subtotal 16500, discount 1650, tax 8 % of 14850 = 1188, credits 3000 after tax
    total = 16500 - 1650 - 3000 + 1188
    assert total == 13038
    paid = invoice("USD", total, 1188, [("base", 12000), ("api_calls", 4500)], plan="pro")
    assert paid.net == 11850 and paid.paid_net == 11850
    result = service.accrue(paid, rules, Fraction(0), {})
    bases = {a.rule.key: a.base for a in result.accruals}
    assert bases == {"api-20": Fraction(35550, 11), "pro-12": Fraction(94800, 11)}
    assert amounts(result) == {"api-20": 646, "pro-12": 1034}
    shown("A.", 11850, 646, 1034, 1680)


def test_example_b_a_partner_crossing_a_volume_tier_mid_month() -> None:
    volume = rule(key="volume", partner_tier="agent", kind="tiered", currency="JPY",
                  tiers=[{"up_to": 1000000, "percent": "0.05"},
                         {"up_to": None, "percent": "0.08"}])  # fmt: skip
    v, sums, got = Fraction(0), dict[str, int](), list[int]()
    for subtotal, tax in ((700000, 70000), (500001, 50000), (99999, 10000)):
        result = service.accrue(invoice("JPY", subtotal + tax, tax, [("room", subtotal)]),
                                [volume], v, sums)  # fmt: skip
        got.append(amounts(result)["volume"])
        v, sums = result.volume, result.accrued
    assert got == [35000, 31000, 8000]
    assert v == 1300000 and sum(got) == 74000
    shown("B.", 35000, 31000, 8000, 74000)


def test_example_c_caps_per_invoice_and_per_month() -> None:
    capped = rule(key="capped", partner_tier="silver", kind="percent", percent="0.15",
                  currency="BHD", cap_per_invoice=5000, cap_per_period=8000)  # fmt: skip
    v, sums, got = Fraction(0), dict[str, int](), list[int]()
    for subtotal, tax in ((40000, 4000), (12345, 1234), (30000, 3000), (20000, 2000)):
        result = service.accrue(invoice("BHD", subtotal + tax, tax, [("fare", subtotal)]),
                                [capped], v, sums)  # fmt: skip
        got.append(amounts(result)["capped"])
        v, sums = result.volume, result.accrued
    assert got == [5000, 1852, 1148, 0]  # 0: no ledger entry
    assert sums == {"capped": 8000}
    shown("C.", 5000, 1852, 1148, 8000)


def test_example_d_a_partial_refund_then_the_rest() -> None:
    gold = rule(key="gold-10", partner_tier="gold", kind="percent", percent="0.125")
    paid = invoice("USD", 11000, 1000, [("base", 10000)])
    (accrual,) = service.accrue(paid, [gold], Fraction(0), {}).accruals
    assert accrual.amount == 1250
    first = service.Reduction("refund", "ref-1", 2500)
    rest = service.Reduction("refund", "ref-2", 8500)
    k0 = paid.paid_net
    out1, done = service.reversals({"gold-10": (1250, 0)}, k0, paid.net, paid.total, [], [first])
    assert [r.amount for r in out1] == [284] and out1[0].kept == Fraction(85000, 11)
    out2, done = service.reversals(
        {"gold-10": (1250, done["gold-10"])}, k0, paid.net, paid.total, [first], [rest]
    )
    assert [r.amount for r in out2] == [966] and done == {"gold-10": 1250}
    # a credit note refunding 2200 of subtotal 2000 and total 2200 takes 2000 off K
    note = service.Reduction("credit_note", "cn-1", 2200, subtotal=2000, total=2200)
    assert service.net_part(note, paid.net, paid.total) == 2000
    shown("D.", 1250)
    assert "**reversed 284**" in section("D.") and "**reversed 966**" in section("D.")


def test_example_e_a_refund_after_a_statement_is_a_negative_line_on_the_next() -> None:
    volume = rule(key="volume", partner_tier="agent", kind="tiered", currency="JPY",
                  tiers=[{"up_to": 1000000, "percent": "0.05"},
                         {"up_to": None, "percent": "0.08"}])  # fmt: skip
    november = service.statement_totals([35000, 31000, 8000])
    assert november == service.Totals(74000, 74000, "payable")
    assert service.after_payout(74000, 74000) == "paid"
    # the second November invoice (550001, tax 50000) refunded in full on December 3
    refund = service.Reduction("refund", "ref-3", 550001)
    out, _ = service.reversals({"volume": (31000, 0)}, Fraction(500001), 500001, 550001, [],
                               [refund])  # fmt: skip
    assert [r.amount for r in out] == [31000]
    # December's volume starts from 0: 5 % of 200000
    december_paid = service.accrue(invoice("JPY", 220000, 20000, [("room", 200000)]),
                                   [volume], Fraction(0), {})  # fmt: skip
    assert amounts(december_paid) == {"volume": 10000}
    december = service.statement_totals([10000, -31000])
    assert december == service.Totals(-21000, 0, "carried")
    january = service.statement_totals([-21000, 45000])
    assert january == service.Totals(24000, 24000, "payable")
    shown("E.", 74000, 31000, 10000, -21000, 24000)


# --- the API ------------------------------------------------------------------------------


@pytest.fixture
async def st(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    async with stack(settings, tenant, build_invoicing(settings), build_partners(settings)) as s:
        await s.api.ok("POST", "/v1/customers", ALICE)
        yield s


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    return body


def fields(r: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(r, 422)["errors"]]


async def accepted(api: Client, method: str, path: str, body: Any) -> dict[str, Any]:
    """A write the door accepts (202, its command id and where to follow it), succeeded."""
    r = await api.send(method, path, body)
    assert r.status_code == 202, r.text
    answer: dict[str, Any] = r.json()
    assert answer["status"] == "pending"
    assert r.headers["location"] == answer["status_url"] == f"/v1/commands/{answer['command_id']}"
    outcome = await api.outcome(answer["command_id"])
    assert outcome["status"] == "succeeded", outcome
    return answer | {"result": outcome["result"]}


async def test_partners_rules_and_attributions_are_commands_read_back_when_done(
    st: Stack,
) -> None:
    api = st.api
    answer = await accepted(api, "POST", "/v1/partners", SAKURA)
    assert answer["partner_id"] == "sakura"
    assert answer["result"] == {"partner_id": "sakura", "tier": "agent", "created": True}
    partner = await api.get("/v1/partners/sakura")
    assert {k: partner[k] for k in SAKURA} == SAKURA
    assert await api.get("/v1/partners") == [partner]
    # a new tier (the rules of "gold" apply from now on); created_at stays
    await accepted(api, "POST", "/v1/partners", SAKURA | {"tier": "gold", "email": None})
    changed = await api.get("/v1/partners/sakura")
    assert (changed["tier"], changed["email"]) == ("gold", None)
    assert changed["created_at"] == partner["created_at"]
    assert changed["updated_at"] >= partner["updated_at"]
    await accepted(api, "POST", "/v1/partners", SAKURA | {"partner_id": "umi", "name": "Umi"})
    assert [p["partner_id"] for p in await api.get("/v1/partners")] == ["sakura", "umi"]
    assert [p["partner_id"] for p in await api.get("/v1/partners", limit=1)] == ["sakura"]
    assert [p["partner_id"] for p in await api.get("/v1/partners", after="sakura")] == ["umi"]

    tiered = {"key": "volume", "partner_tier": "gold", "kind": "tiered", "currency": "JPY",
              "tiers": [{"up_to": 1000000, "percent": "0.05"},
                        {"up_to": None, "percent": "0.08"}], "cap_per_period": 90000}  # fmt: skip
    await accepted(api, "POST", "/v1/commission-rules", DEFAULT_RULE)
    await accepted(api, "POST", "/v1/commission-rules", tiered)
    rules = await api.get("/v1/commission-rules")
    assert [(r["key"], r["partner_tier"], r["kind"]) for r in rules] == [
        ("agent-default", "agent", "percent"),
        ("volume", "gold", "tiered"),
    ]
    assert rules[0]["percent"] == "0.125" and rules[0]["currency"] is None
    assert rules[1]["tiers"] == [{"up_to": 1000000, "percent": "0.05"},
                                 {"up_to": None, "percent": "0.08"}]  # fmt: skip
    assert rules[1]["cap_per_period"] == 90000
    assert [r["key"] for r in await api.get("/v1/commission-rules", partner_tier="gold")] == [
        "volume"
    ]
    # the same key again replaces the rule
    await accepted(api, "POST", "/v1/commission-rules", DEFAULT_RULE | {"percent": "0.1"})
    (default,) = await api.get("/v1/commission-rules", partner_tier="agent")
    assert default["percent"] == "0.1"

    since = "2026-01-01T00:00:00Z"
    answer = await accepted(
        api,
        "POST",
        "/v1/customers/alice/partner",
        {"partner_id": "sakura", "effective_from": since},
    )
    assert answer["result"]["effective_from"] == "2026-01-01T00:00:00+00:00"
    (attribution,) = await api.get("/v1/partners/sakura/customers")
    assert attribution["customer"] == "alice" and attribution["partner_id"] == "sakura"
    assert datetime.fromisoformat(attribution["effective_from"]) == datetime(2026, 1, 1, tzinfo=UTC)
    assert await api.get("/v1/partners/umi/customers") == []
    assert await api.get("/v1/partners/sakura/commissions") == []
    assert await api.get("/v1/partners/sakura/statements") == []


RULE_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"kind": "percent", "percent": None}, "percent"),  # its kind's own field missing
    ({"kind": "percent", "amount": 500, "currency": "USD"}, "amount"),  # another kind's
    ({"kind": "fixed", "percent": None, "amount": 500}, "currency"),  # an amount needs one
    ({"plan": "pro", "product": "room"}, "product"),
    ({"percent": "1.5"}, "percent"),  # a fraction at most 1
    ({"percent": 0.1}, "percent"),  # a float
    ({"percent": "0.1234567890123"}, "percent"),  # 13 decimal places
    ({"cap_per_invoice": 500}, "currency"),
    ({"cap_per_period": 0, "currency": "USD"}, "cap_per_period"),
    ({"key": "Not A Slug"}, "key"),
    ({"colour": "red"}, "colour"),
    (
        {
            "kind": "tiered",
            "percent": None,
            "currency": "JPY",
            "tiers": [
                {"up_to": 500, "percent": "0.1"},
                {"up_to": 500, "percent": "0.2"},
                {"up_to": None, "percent": "0.3"},
            ],
        },
        "tiers",  # the reason names tiers[1].up_to
    ),
    (
        {
            "kind": "tiered",
            "percent": None,
            "currency": "JPY",
            "tiers": [{"up_to": 500, "percent": "0.1"}, {"up_to": 900, "percent": "0.2"}],
        },
        "tiers",  # the reason names tiers[1].up_to
    ),
    (
        {
            "kind": "tiered",
            "percent": None,
            "currency": "JPY",
            "tiers": [{"up_to": None, "percent": "0.1"}, {"up_to": None, "percent": "0.2"}],
        },
        "tiers",  # the reason names tiers[0].up_to
    ),
    (
        {
            "kind": "tiered",
            "percent": None,
            "tiers": [{"up_to": 500, "percent": "0.1"}, {"up_to": None, "percent": "0.2"}],
        },
        "currency",
    ),
]


async def test_the_door_refuses_a_rule_naming_the_field_and_publishes_nothing(
    st: Stack,
) -> None:
    before = await topic_size(st.settings, topics.COMMANDS_PARTNERS)
    for change, field in RULE_REFUSALS:
        body = {k: v for k, v in (DEFAULT_RULE | change).items() if v is not None}
        r = await st.api.send("POST", "/v1/commission-rules", body)
        assert fields(r) == [field], (change, r.text)
    partner_refusals = [
        ({"name": ""}, "name"),
        ({"tier": "Gold"}, "tier"),
        ({"email": "a\nb"}, "email"),
        ({"partner_id": "-x"}, "partner_id"),
    ]
    for bad, field in partner_refusals:
        r = await st.api.send("POST", "/v1/partners", SAKURA | bad)
        assert fields(r) == [field], (bad, r.text)
    assert await topic_size(st.settings, topics.COMMANDS_PARTNERS) == before
    # a single unbounded tier needs no currency (it has no amount), and applies to any
    one = {"kind": "tiered", "tiers": [{"up_to": None, "percent": "0.05"}]}
    await accepted(st.api, "POST", "/v1/commission-rules", DEFAULT_RULE | one | {"percent": None})
    assert await topic_size(st.settings, topics.COMMANDS_PARTNERS) == before + 1


async def test_unknown_partners_customers_and_statements_are_404_and_months_must_have_ended(
    st: Stack,
) -> None:
    api, auth = st.api, st.api.auth
    for path in ("/v1/partners/nope", "/v1/partners/nope/customers",
                 "/v1/partners/nope/commissions", "/v1/partners/nope/statements",
                 "/v1/commission-statements/cst_" + "0" * 32):  # fmt: skip
        r = await st.http.get(path, headers=auth)
        assert problem(r, 404)["type"] == "urn:billstream:problem:not_found", path
    r = await st.http.get("/v1/commission-statements/cst_nothex", headers=auth)
    assert fields(r) == ["statement_id"]
    since = {"partner_id": "sakura", "effective_from": "2026-01-01T00:00:00Z"}
    r = await api.send("POST", "/v1/customers/alice/partner", since)
    assert "partner 'sakura'" in problem(r, 404)["detail"]
    await accepted(api, "POST", "/v1/partners", SAKURA)
    r = await api.send("POST", "/v1/customers/bob/partner", since)
    assert "customer 'bob'" in problem(r, 404)["detail"]
    r = await api.send("POST", "/v1/customers/alice/partner", since | {"effective_from": "soon"})
    assert fields(r) == ["effective_from"]
    r = await api.send("POST", "/v1/partners/nope/statements", {"period": "2026-01"})
    assert "partner 'nope'" in problem(r, 404)["detail"]
    payout = {"amount": 100, "reference": "SEPA 1"}
    r = await api.send("POST", f"/v1/commission-statements/cst_{'0' * 32}/payouts", payout)
    assert "commission statement" in problem(r, 404)["detail"]

    this_month = period_of(datetime.now(UTC))
    for period in (this_month, "2099-12"):
        r = await api.send("POST", "/v1/partners/sakura/statements", {"period": period})
        assert fields(r) == ["period"]
        assert "has not ended" in problem(r, 422)["errors"][0]["reason"]
    for period in ("2026-13", "2026-1", "26-01"):
        r = await api.send("POST", "/v1/partners/sakura/statements", {"period": period})
        assert fields(r) == ["period"]
    r = await st.http.get(
        "/v1/partners/sakura/commissions",
        params={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        headers=auth,
    )
    assert fields(r) == ["to"]
    # a month with nothing to list issues nothing
    answer = await accepted(api, "POST", "/v1/partners/sakura/statements", {"period": "2026-01"})
    assert answer["result"] == {"issued": False, "statements": []}


def last_month() -> tuple[str, datetime]:
    """The month before this one (it has ended), and a moment in it."""
    start, _ = period_bounds(period_of(datetime.now(UTC)))
    before, _ = period_bounds(period_of(start - timedelta(days=1)))
    return period_of(before), before + timedelta(days=14, hours=9)


def paid(tenant: str, customer: str, invoice_id: str, at: datetime,
         subtotal: int, tax: int) -> InvoicePaid:  # fmt: skip
    """An invoice paid in full at ``at``, as invoicing announces it: one line of
    ``subtotal`` (item ``room``) and ``tax``."""
    start = at.replace(day=1, hour=0)
    line = InvoiceLine(
        price_key="room", kind="one_off", description="Room", period_start=start,
        period_end=start, quantity="1", tiers=[], proration="1", minimum_applied=False,
        amount=subtotal,
    )  # fmt: skip
    total = subtotal + tax
    data = InvoiceData(
        invoice_id=invoice_id, number=f"INV-{invoice_id}", status="paid", customer=customer,
        kind="one_off", currency="USD", period_start=start, period_end=start,
        subtotal=subtotal, tax=tax, total=total, amount_paid=total, amount_due=0,
        lines=[line],
    )  # fmt: skip
    return InvoicePaid(source="tests", tenantid=tenant, subject=invoice_id, time=at, data=data)


async def test_a_paid_invoice_accrues_a_statement_lists_it_and_payouts_pay_it(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    api, t = st.api, tenant.tenant_id
    await accepted(api, "POST", "/v1/partners", SAKURA)
    await accepted(api, "POST", "/v1/commission-rules", DEFAULT_RULE)
    since = {"partner_id": "sakura", "effective_from": "2020-01-01T00:00:00Z"}
    await accepted(api, "POST", "/v1/customers/alice/partner", since)
    period, at = last_month()
    # 123.45 USD + 10 % tax (1234.5 → 1234): the paid net is 12345; 12.5 % = 1543.125 → 1543
    async with producer(st.settings) as p:
        event = paid(t, "alice", "in-1", at, 12345, 1234)
        await p.send_and_wait(topics.EVENTS_INVOICING, event.to_json(), key=f"{t}:alice".encode())

    async def ledger() -> list[dict[str, Any]] | None:
        entries: list[dict[str, Any]] = await api.get("/v1/partners/sakura/commissions")
        return entries or None

    (entry,) = await wait_for(ledger, timeout_s=30)
    assert {k: entry[k] for k in ("kind", "partner_id", "customer", "invoice_id",
                                  "invoice_number", "rule", "rule_kind", "currency",
                                  "base_minor", "amount", "period", "cause", "cause_id",
                                  "statement_id")} == {
        "kind": "accrued", "partner_id": "sakura", "customer": "alice", "invoice_id": "in-1",
        "invoice_number": "INV-in-1", "rule": "agent-default", "rule_kind": "percent",
        "currency": "USD", "base_minor": "12345", "amount": 1543, "period": period,
        "cause": "invoice_paid", "cause_id": "in-1", "statement_id": None,
    }  # fmt: skip
    assert datetime.fromisoformat(entry["effective_at"]) == at
    start, end = period_bounds(period)
    window = {"from": start.isoformat(), "to": end.isoformat()}
    assert await api.get("/v1/partners/sakura/commissions", **window) == [entry]
    assert await api.get("/v1/partners/sakura/commissions", **{"from": end.isoformat()}) == []

    answer = await accepted(api, "POST", "/v1/partners/sakura/statements", {"period": period})
    (summary,) = answer["result"]["statements"]
    assert answer["result"]["issued"] is True
    (statement,) = await api.get("/v1/partners/sakura/statements")
    sid = statement["statement_id"]
    assert summary == {k: statement[k] for k in summary}
    assert re.fullmatch(r"CS-\d{4}-000001", statement["number"])
    assert {k: statement[k] for k in ("partner_id", "partner_name", "period", "currency",
                                      "total", "amount_payable", "amount_paid", "status",
                                      "carried_to")} == {
        "partner_id": "sakura", "partner_name": "Sakura Travel KK", "period": period,
        "currency": "USD", "total": 1543, "amount_payable": 1543, "amount_paid": 0,
        "status": "payable", "carried_to": None,
    }  # fmt: skip
    (line,) = statement["lines"]
    assert (line["entry_id"], line["kind"], line["invoice_id"], line["invoice_number"],
            line["customer"], line["rule"], line["amount"]) == (
        entry["entry_id"], "accrued", "in-1", "INV-in-1", "alice", "agent-default", 1543,
    )  # fmt: skip
    assert await api.get(f"/v1/commission-statements/{sid}") == statement
    (entry,) = await api.get("/v1/partners/sakura/commissions")
    assert entry["statement_id"] == sid
    # the same month again: the same statement, nothing new
    again = await accepted(api, "POST", "/v1/partners/sakura/statements", {"period": period})
    assert again["result"] == {"issued": False, "statements": [summary]}

    payouts = f"/v1/commission-statements/{sid}/payouts"
    r = await api.send("POST", payouts, {"amount": 1544, "reference": "SEPA 1"})
    assert fields(r) == ["amount"]
    assert "1543" in problem(r, 422)["errors"][0]["reason"]
    r = await api.send("POST", payouts, {"amount": 1000, "reference": "SEPA\u00001"})
    assert fields(r) == ["reference"]
    first = await accepted(api, "POST", payouts, {"amount": 1000, "reference": "SEPA 1"})
    assert first["payout_id"].startswith("po_")
    assert first["result"] == {"payout_id": first["payout_id"], "amount_paid": 1000,
                               "status": "payable"}  # fmt: skip
    statement = await api.get(f"/v1/commission-statements/{sid}")
    assert (statement["amount_paid"], statement["status"]) == (1000, "payable")
    await accepted(api, "POST", payouts, {"amount": 543, "reference": "SEPA 2",
                                          "paid_at": "2026-11-30T12:00:00Z"})  # fmt: skip
    statement = await api.get(f"/v1/commission-statements/{sid}")
    assert (statement["amount_paid"], statement["status"]) == (1543, "paid")
    r = await api.send("POST", payouts, {"amount": 1, "reference": "SEPA 3"})
    assert "(0 in minor units of USD)" in problem(r, 422)["errors"][0]["reason"]

    # another tenant sees none of it
    other = Client(st.http, await make_tenant(sessions, "globex"))
    assert await other.get("/v1/partners") == []
    assert await other.get("/v1/commission-rules") == []
    for path in ("/v1/partners/sakura", "/v1/partners/sakura/commissions",
                 "/v1/partners/sakura/statements", "/v1/partners/sakura/customers",
                 f"/v1/commission-statements/{sid}"):  # fmt: skip
        problem(await st.http.get(path, headers=other.auth), 404)
    r = await other.send("POST", payouts, {"amount": 1, "reference": "x"})
    problem(r, 404)
    r = await other.send("POST", "/v1/partners/sakura/statements", {"period": period})
    problem(r, 404)
    r = await other.send("POST", "/v1/customers/alice/partner", since)
    assert "customer 'alice'" in problem(r, 404)["detail"]


def refunded(
    tenant: str, customer: str, invoice_id: str, at: datetime, amount: int
) -> PaymentRefunded:
    data = RefundData(
        refund_id=f"ref-{invoice_id}", payment_id=f"pay-{invoice_id}", invoice_id=invoice_id,
        customer=customer, amount=amount, amount_refunded=amount, currency="USD",
    )  # fmt: skip
    return PaymentRefunded(source="tests", tenantid=tenant, subject=invoice_id, time=at, data=data)


async def test_a_refund_after_a_statement_is_a_negative_line_of_the_next_one(
    st: Stack, tenant: TenantKey
) -> None:
    """docs/partners.md, "Statements": an invoice of two months ago on that month's
    statement, paid out; refunded last month: the reversal is a line of last month's
    statement, whose total is negative — carried, nothing payable."""
    api, t = st.api, tenant.tenant_id
    await accepted(api, "POST", "/v1/partners", SAKURA)
    await accepted(api, "POST", "/v1/commission-rules", DEFAULT_RULE)
    since = {"partner_id": "sakura", "effective_from": "2020-01-01T00:00:00Z"}
    await accepted(api, "POST", "/v1/customers/alice/partner", since)
    last, at1 = last_month()
    start1, _ = period_bounds(last)
    before, at2 = last_month_of(start1)
    key = f"{t}:alice".encode()
    async with producer(st.settings) as p:
        # 12.5 % of 10000 = 1250, paid two months ago
        event = paid(t, "alice", "in-2", at2, 10000, 1000)
        await p.send_and_wait(topics.EVENTS_INVOICING, event.to_json(), key=key)
    await wait_for(lambda: entries(api, 1), timeout_s=30)
    answer = await accepted(api, "POST", "/v1/partners/sakura/statements", {"period": before})
    (first,) = answer["result"]["statements"]
    assert (first["total"], first["status"]) == (1250, "payable")
    payouts = f"/v1/commission-statements/{first['statement_id']}/payouts"
    await accepted(api, "POST", payouts, {"amount": 1250, "reference": "SEPA 1"})

    async with producer(st.settings) as p:
        # last month: 12.5 % of 4000 = 500 earned, then the first invoice refunded in full
        event = paid(t, "alice", "in-3", at1 - timedelta(days=1), 4000, 400)
        await p.send_and_wait(topics.EVENTS_INVOICING, event.to_json(), key=key)
        refund = refunded(t, "alice", "in-2", at1, 11000)
        await p.send_and_wait(topics.EVENTS_PAYMENTS, refund.to_json(), key=key)
    ledger = await wait_for(lambda: entries(api, 3), timeout_s=30)
    accrual, _, reversal = ledger
    assert (reversal["kind"], reversal["amount"], reversal["cause"], reversal["cause_id"]) == (
        "reversed", 1250, "refund", "ref-in-2",
    )  # fmt: skip
    assert reversal["accrual_id"] == accrual["entry_id"] and reversal["period"] == last
    assert reversal["statement_id"] is None  # the first statement is closed

    answer = await accepted(api, "POST", "/v1/partners/sakura/statements", {"period": last})
    (summary,) = answer["result"]["statements"]
    assert (summary["total"], summary["amount_payable"], summary["status"]) == (
        -750, 0, "carried",
    )  # fmt: skip
    statement = await api.get(f"/v1/commission-statements/{summary['statement_id']}")
    assert [(ln["kind"], ln["invoice_id"], ln["amount"]) for ln in statement["lines"]] == [
        ("accrued", "in-3", 500),
        ("reversed", "in-2", -1250),
    ]
    assert statement["carried_to"] is None  # until the partner's next statement in USD
    r = await api.send(
        "POST", f"/v1/commission-statements/{summary['statement_id']}/payouts",
        {"amount": 1, "reference": "x"},
    )  # fmt: skip
    assert fields(r) == ["amount"]
    # the first statement still shows what it listed, paid
    listed = await api.get("/v1/partners/sakura/statements")
    assert [(s["period"], s["total"], s["status"]) for s in listed] == [
        (last, -750, "carried"),
        (before, 1250, "paid"),
    ]


def last_month_of(start: datetime) -> tuple[str, datetime]:
    """The month before the one starting at ``start``, and a moment in it."""
    before, _ = period_bounds(period_of(start - timedelta(days=1)))
    return period_of(before), before + timedelta(days=10, hours=9)


async def entries(api: Client, n: int) -> list[dict[str, Any]] | None:
    """The partner's ledger once it has ``n`` entries."""
    got: list[dict[str, Any]] = await api.get("/v1/partners/sakura/commissions")
    assert len(got) <= n, got
    return got if len(got) == n else None

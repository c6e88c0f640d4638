"""A coupon, a credit note and late usage on the same customer, end to end over HTTP (real
ingress, metering and invoicing workers, the real broker and PostgreSQL), in currencies of
exponent 0, 2 and 3, every amount computed by hand below.

The customer pays 10 % tax. Its subscription has a 20 % coupon for two periods. October:
a flat fee and 1,000 tokens, both 20 % off. A credit note takes part of October's tokens
line back while the invoice is unpaid (the amount due goes down). 500 more October tokens
arrive late: November carries them as an adjustment line, which the coupon does not
reduce, and its own flat fee 20 % off. December is billed in full: the coupon is used up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.test_invoicing import Stack, usage_event
from tests.integration.test_invoicing_late_usage import billing
from workers.devstack import wait_for

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
JAN = datetime(2032, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
OCTOBER = "2031-10-01T00:00Z/2031-11-01T00:00Z"
__all__ = ["billing"]  # the stack fixture (its meter: tokens, a sum of $.n)


@dataclass(frozen=True)
class Case:
    currency: str
    flat: str  # major units
    unit: str  # per token, major units
    credit_note_line: int  # minor units of October's tokens line taken back, before tax
    # expected, minor units, computed by hand in the comments of CASES
    october: tuple[int, int, int, int, int, int]  # base, tokens, their discounts, tax, total
    credit_note: tuple[int, int]  # tax, total
    november: tuple[int, int, int, int, int]  # base, adjustment, discount, tax, total
    december_total: int


CASES = [
    # JPY, exponent 0. October: 10000 + 1000 x 0.7 = 700; 20 %: 2000 and 140; tax 10 % of
    # (10700 - 2140 = 8560) = 856; total 9416. Credit note: 333 of tokens, tax 33.3 -> 33,
    # total 366 (due 9416 - 366 = 9050). Late: October now 1500 x 0.7 = 1050, billed 700:
    # +350. November: 10000 - 2000 + 350 = 8350, tax 835, total 9185. December: 11000.
    Case("JPY", "10000", "0.7", 333, (10000, 700, 2000, 140, 856, 9416), (33, 366),
         (10000, 350, 2000, 835, 9185), 11000),
    # USD, exponent 2. October: 100.00 + 1000 x 0.0125 = 12.50; 20 %: 2000 and 250; tax
    # 10 % of (11250 - 2250 = 9000) = 900; total 9900. Credit note: 405 of tokens, tax 40.5
    # -> 40 (half-even), total 445. Late: 1500 x 0.0125 = 18.75, billed 12.50: +625.
    # November: 10000 - 2000 + 625 = 8625, tax 862.5 -> 862, total 9487. December 11000.
    Case("USD", "100.00", "0.0125", 405, (10000, 1250, 2000, 250, 900, 9900), (40, 445),
         (10000, 625, 2000, 862, 9487), 11000),
    # BHD, exponent 3. October: 25.000 + 1000 x 0.0125 = 12.500; 20 %: 5000 and 2500; tax
    # 10 % of (37500 - 7500 = 30000) = 3000; total 33000. Credit note: 1234, tax 123.4 ->
    # 123, total 1357. Late: 1500 x 0.0125 = 18.750, billed 12.500: +6250. November:
    # 25000 - 5000 + 6250 = 26250, tax 2625, total 28875. December: 25000 + 2500 = 27500.
    Case("BHD", "25.000", "0.0125", 1234, (25000, 12500, 5000, 2500, 3000, 33000),
         (123, 1357), (25000, 6250, 5000, 2625, 28875), 27500),
]  # fmt: skip


async def finalized(st: Stack, as_of: datetime, period_start: datetime) -> dict[str, Any]:
    """Bill as of ``as_of`` until the invoice of the period starting at ``period_start`` is
    finalized (a draft waits for metering to catch up); that invoice."""
    start = period_start.isoformat().replace("+00:00", "Z")

    async def done() -> dict[str, Any] | None:
        await st.run_billing(as_of)
        found = [i for i in await st.invoices(customer="mia") if i["period_start"] == start]
        return found[0] if found and found[0]["status"] != "draft" else None

    invoice: dict[str, Any] = await wait_for(done, timeout_s=30)
    return invoice


def amounts(invoice: dict[str, Any]) -> dict[tuple[str, bool, str | None], int]:
    """(price key, is a discount line, adjustment_for) -> amount, for each line."""
    return {
        (ln["price_key"], ln["kind"] == "discount", ln["adjustment_for"]): ln["amount"]
        for ln in invoice["lines"]
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.currency)
async def test_a_coupon_a_credit_note_and_late_usage_on_one_customer(
    billing: Stack, case: Case
) -> None:
    st, c = billing, case
    customer = {"external_id": "mia", "name": "Mia", "currency": c.currency, "tax_rate": "0.1"}
    await st.api.ok("POST", "/v1/customers", customer)
    await st.api.ok("POST", "/v1/plans", {
        "key": "std", "name": "Standard", "currency": c.currency, "interval": "month",
        "prices": [
            {"kind": "flat", "key": "base", "name": "Base", "amount": c.flat},
            {"kind": "per_unit", "key": "tokens", "name": "Tokens", "meter": "tokens",
             "unit_price": c.unit},
        ],
    })  # fmt: skip
    sub = {"id": "s-mia", "customer": "mia", "plan": "std", "start": OCT.isoformat()}
    await st.api.ok("POST", "/v1/subscriptions", sub)
    coupon = {"id": "twenty", "name": "Twenty", "percent_off": "20", "duration": "repeating",
              "duration_in_periods": 2}  # fmt: skip
    await st.api.ok("POST", "/v1/coupons", coupon)
    await st.api.ok(
        "POST", "/v1/customers/mia/discounts", {"coupon": "twenty", "subscription_id": "s-mia"}
    )
    await st.send_usage([usage_event("u1", "mia", OCT + HOUR, "llm", n=1000)])
    await st.wait_usage("tokens", "mia", OCT, NOV, Decimal(1000))

    # October: both lines 20 % off
    october = await finalized(st, NOV + HOUR, OCT)
    base, tokens, off_base, off_tokens, tax, total = c.october
    assert amounts(october) == {
        ("base", False, None): base,
        ("tokens", False, None): tokens,
        ("base", True, None): -off_base,
        ("tokens", True, None): -off_tokens,
    }
    discounts = {ln["applies_to"] for ln in october["lines"] if ln["kind"] == "discount"}
    assert discounts == {0, 1}  # each discount line names the line it reduces
    assert (october["subtotal"], october["discount"]) == (base + tokens, off_base + off_tokens)
    assert (october["tax"], october["total"], october["amount_due"]) == (tax, total, total)

    # a credit note takes part of the tokens line back: the unpaid amount due goes down
    note_tax, note_total = c.credit_note
    body = {"id": "cn-1", "reason": "product_unsatisfactory",
            "lines": [{"line": 1, "amount": c.credit_note_line}]}  # fmt: skip
    await st.api.ok("POST", f"/v1/invoices/{october['invoice_id']}/credit-notes", body)
    note = await st.api.get("/v1/credit-notes/cn-1")
    assert note["number"] == f"CN-{datetime.now(UTC).year}-000001"  # issued now: this year
    assert (note["subtotal"], note["tax"], note["total"]) == (
        c.credit_note_line, note_tax, note_total,
    )  # fmt: skip
    assert note["amount_reducing_due"] == note_total
    october = await st.api.get(f"/v1/invoices/{october['invoice_id']}")
    assert (october["status"], october["total"]) == ("finalized", total)  # never changed
    assert (october["amount_credited"], october["amount_due"]) == (note_total, total - note_total)

    # late October usage: an adjustment line on November, not discounted
    await st.send_usage([usage_event("u2", "mia", OCT + timedelta(days=9), "llm", n=500)])
    await st.wait_usage("tokens", "mia", OCT, NOV, Decimal(1500))
    november = await finalized(st, DEC + HOUR, NOV)
    base, adjustment, off_base, tax, total = c.november
    assert amounts(november) == {
        ("base", False, None): base,
        ("tokens", False, None): 0,  # no November usage: nothing to discount
        ("tokens", False, OCTOBER): adjustment,
        ("base", True, None): -off_base,
    }
    assert (november["discount"], november["tax"], november["total"]) == (off_base, tax, total)

    # December: the coupon's two periods are used up
    december = await finalized(st, JAN + HOUR, DEC)
    assert december["discount"] == 0
    assert december["total"] == c.december_total
    assert [i["number"] for i in (october, november, december)] == [
        "INV-2031-000001", "INV-2031-000002", "INV-2032-000001",
    ]  # fmt: skip


async def test_a_trial_neither_takes_a_discount_nor_uses_up_its_periods(billing: Stack) -> None:
    """KWD (exponent 3): a 14-day trial from Oct 1, then 10.000 a month; a 50 % coupon for
    one period reduces the first paid period, not the free trial's invoice of 0."""
    st = billing
    customer = {"external_id": "mia", "name": "Mia", "currency": "KWD"}
    await st.api.ok("POST", "/v1/customers", customer)
    prices = [{"kind": "flat", "key": "base", "name": "Base", "amount": "10.000"}]
    plan = {"key": "kw", "name": "KW", "currency": "KWD", "interval": "month", "prices": prices}
    await st.api.ok("POST", "/v1/plans", plan)
    sub = {"id": "s-mia", "customer": "mia", "plan": "kw", "start": OCT.isoformat(),
           "trial_days": 14}  # fmt: skip
    await st.api.ok("POST", "/v1/subscriptions", sub)
    coupon = {"id": "half", "name": "Half", "percent_off": "50", "duration": "once"}
    await st.api.ok("POST", "/v1/coupons", coupon)
    await st.api.ok(
        "POST", "/v1/customers/mia/discounts", {"coupon": "half", "subscription_id": "s-mia"}
    )

    trial_end = OCT + timedelta(days=14)
    trial = await finalized(st, trial_end + HOUR, OCT)
    assert (trial["total"], trial["discount"], trial["status"]) == (0, 0, "paid")
    assert not [ln for ln in trial["lines"] if ln["kind"] == "discount"]

    first = await finalized(st, NOV + timedelta(days=14, hours=1), trial_end)
    assert (first["subtotal"], first["discount"], first["total"]) == (10000, 5000, 5000)
    second_start = NOV + timedelta(days=14)
    second = await finalized(st, DEC + timedelta(days=14, hours=1), second_start)
    assert (second["discount"], second["total"]) == (0, 10000)  # "once": used up


async def test_a_commitment_is_drawn_down_by_what_discounted_invoices_charge(
    billing: Stack,
) -> None:
    """USD: 500.00 committed over October and November; 100.00 a month, 25 % off on the
    customer: each month charges 100.00 - 25.00 = 75.00, so 150.00 is drawn, 350.00 left."""
    st = billing
    await st.api.ok("POST", "/v1/customers", {"external_id": "mia", "name": "Mia",
                                              "currency": "USD", "tax_rate": "0.1"})  # fmt: skip
    prices = [{"kind": "flat", "key": "base", "name": "Base", "amount": "100.00"}]
    plan = {"key": "us", "name": "US", "currency": "USD", "interval": "month", "prices": prices}
    await st.api.ok("POST", "/v1/plans", plan)
    term = {"id": "c1", "amount": 50000, "start": OCT.isoformat(), "end": DEC.isoformat()}
    await st.api.ok("POST", "/v1/customers/mia/commitments", term)
    coupon = {"id": "q", "name": "Quarter", "percent_off": "25", "duration": "forever"}
    await st.api.ok("POST", "/v1/coupons", coupon)
    await st.api.ok("POST", "/v1/customers/mia/discounts", {"coupon": "q"})
    sub = {"id": "s-mia", "customer": "mia", "plan": "us", "start": OCT.isoformat()}
    await st.api.ok("POST", "/v1/subscriptions", sub)

    await finalized(st, NOV + HOUR, OCT)
    november = await finalized(st, DEC + HOUR, NOV)
    # 10000 - 2500 = 7500, tax 750: the tax is not spend
    assert (november["discount"], november["tax"], november["total"]) == (2500, 750, 8250)
    [c] = await st.api.get("/v1/customers/mia/commitments")
    assert (c["drawn"], c["remaining"]) == (15000, 35000)

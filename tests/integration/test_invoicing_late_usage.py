"""Late usage, end to end over HTTP (real ingress, metering and invoicing workers, the real
broker and PostgreSQL), and the three places where the code and docs/invoicing.md used to
disagree (issue 16), as decided in ADR 0050:

- late usage of an ended subscription's final period is billed on one adjustment invoice
  after the tenant's ``late_usage_grace_hours``; with no late usage, no invoice and no
  number are used;
- a negative metered value bills 0 but the line shows the value, and a later adjustment
  shows the change of the metered value;
- every period whose metered value changed gets an adjustment line, even of amount 0;
- an invoice is numbered in the year of its own date: the run's ``as_of``.
"""

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
JAN = datetime(2032, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
OCTOBER = "2031-10-01T00:00Z/2031-11-01T00:00Z"


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    # late usage of a period is billed up to 70 days after it ended (default 35), so October
    # usage arriving after November was finalized still lands on December
    s = settings.model_copy(update={"invoicing_tick_s": 0.1, "late_usage_lookback_days": 70})
    async with stack(s, tenant, build_metering(s), build_invoicing(s)) as st:
        meter = {
            "key": "tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value_property": "$.n",
        }
        await st.api.ok("POST", "/v1/meters", meter)
        yield st


def plan(key: str, currency: str, flat: str, unit: str, included: str = "0") -> dict[str, Any]:
    return {"key": key, "name": key, "currency": currency, "interval": "month", "prices": [
        {"kind": "flat", "key": "base", "name": "Base", "amount": flat},
        {"kind": "per_unit", "key": "tokens", "name": "Tokens", "meter": "tokens",
         "unit_price": unit, "included_quantity": included},
    ]}  # fmt: skip


async def tokens(st: Stack, id: str, who: str, at: datetime, n: int, total: int) -> None:
    """Send ``n`` tokens for ``who`` at ``at``; wait until October's value is ``total``."""
    await st.send_usage([usage_event(id, who, at, "llm", n=n)])
    await st.wait_usage("tokens", who, OCT, NOV, Decimal(total))


async def finalized(st: Stack, as_of: datetime, **params: Any) -> list[dict[str, Any]]:
    """Run billing as of ``as_of`` until no draft is left (a draft waits for metering)."""

    async def done() -> list[dict[str, Any]] | None:
        run = await st.run_billing(as_of)
        return None if run["drafts_waiting"] else await st.invoices(**params)

    result: list[dict[str, Any]] = await wait_for(done, timeout_s=30)
    return result


async def test_late_usage_of_an_ended_subscription_is_billed_on_one_adjustment_invoice(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok("PUT", "/v1/invoicing/config", {"late_usage_grace_hours": 24})
    await st.api.ok("POST", "/v1/plans", plan("jp", "JPY", "1000", "0.5"))
    for who in ("kenji", "yuki"):
        customer = {"external_id": who, "name": who, "currency": "JPY", "tax_rate": "0.1"}
        await st.api.ok("POST", "/v1/customers", customer)
        body = {"customer": who, "plan": "jp", "start": OCT.isoformat(), "id": f"s-{who}"}
        await st.api.ok("POST", "/v1/subscriptions", body)
        await st.api.ok("POST", f"/v1/subscriptions/s-{who}/cancel", {"mode": "at_period_end"})
    await tokens(st, "k1", "kenji", OCT + HOUR, 300, 300)
    await tokens(st, "y1", "yuki", OCT + HOUR, 40, 40)

    first = await finalized(st, NOV + HOUR)
    # kenji: 1000 + 300 x 0.5 = 1150, tax 10 % = 115, total 1265; yuki: 1000 + 20, 102
    by_who = {i["customer"]: i for i in first}
    assert (by_who["kenji"]["total"], by_who["yuki"]["total"]) == (1265, 1122)
    assert {i["number"] for i in first} == {"INV-2031-000001", "INV-2031-000002"}

    # October usage of kenji arrives after his final invoice: no next invoice will carry it
    await tokens(st, "k2", "kenji", OCT + timedelta(days=20), 101, 401)
    assert len(await finalized(st, NOV + 12 * HOUR)) == 2  # within the 24 h grace: nothing

    after = await finalized(st, NOV + 25 * HOUR)
    [adjustment] = [i for i in after if i["kind"] == "adjustment"]
    assert len(after) == 3  # yuki had no late usage: no invoice, no number used
    assert adjustment["customer"] == "kenji"
    assert adjustment["subscription_id"] == "s-kenji"
    assert adjustment["number"] == "INV-2031-000003"  # gapless
    [line] = adjustment["lines"]
    # October now: 1000 + 401 x 0.5 = 1000 + 200.5 -> 200 (half-even, rounded once per
    # period) = 1200; billed 1150: +50 for +101 tokens; tax 10 % = 5
    assert (line["adjustment_for"], line["quantity"], line["amount"]) == (OCTOBER, "101", 50)
    assert (adjustment["subtotal"], adjustment["tax"], adjustment["total"]) == (50, 5, 55)
    assert adjustment["amount_due"] == 55

    # once per subscription: a later run and more late usage bill nothing again
    await tokens(st, "k3", "kenji", OCT + timedelta(days=21), 7, 408)
    assert len(await finalized(st, NOV + 48 * HOUR)) == 3


async def test_a_negative_value_shows_as_it_is_and_its_adjustment_is_the_change_of_the_value(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok("POST", "/v1/plans", plan("us", "USD", "10.00", "0.01", included="100"))
    await st.api.ok("POST", "/v1/customers",
                    {"external_id": "ana", "name": "Ana", "currency": "USD"})  # fmt: skip
    sub = {"customer": "ana", "plan": "us", "start": OCT.isoformat(), "id": "s-ana"}
    await st.api.ok("POST", "/v1/subscriptions", sub)
    await tokens(st, "a1", "ana", OCT + HOUR, -250, -250)  # refunds exceeded usage

    [october] = await finalized(st, NOV + HOUR)
    tokens_line = next(ln for ln in october["lines"] if ln["price_key"] == "tokens")
    # billed as 0, shown as the metered value (what GET /v1/meters/tokens/usage gives)
    assert (tokens_line["quantity"], tokens_line["amount"]) == ("-250", 0)
    assert october["total"] == 1000

    # late October usage: -250 + 300 = 50, still within the 100 included: amount 0, but the
    # metered value changed, so November shows a line of 0 with the change (+300)
    await tokens(st, "a2", "ana", OCT + timedelta(days=3), 300, 50)
    november = next(i for i in await finalized(st, DEC + HOUR) if i["period_start"] > "2031-11")
    [adj] = [ln for ln in november["lines"] if ln["adjustment_for"]]
    assert (adj["adjustment_for"], adj["quantity"], adj["amount"]) == (OCTOBER, "300", 0)

    # more: 50 + 250 = 300 -> (300 - 100) x 0.01 = 2.00 now, 0 billed: +200 for +250
    await tokens(st, "a3", "ana", OCT + timedelta(days=4), 250, 300)
    december = next(i for i in await finalized(st, JAN + HOUR) if i["period_start"] > "2031-12")
    [adj] = [ln for ln in december["lines"] if ln["adjustment_for"]]
    assert (adj["adjustment_for"], adj["quantity"], adj["amount"]) == (OCTOBER, "250", 200)
    assert december["total"] == 1000 + 200


async def test_an_invoice_is_numbered_in_the_year_of_its_date_the_runs_as_of(
    billing: Stack,
) -> None:
    st = billing
    await st.api.ok("POST", "/v1/plans", plan("kw", "KWD", "4.250", "0.001"))
    await st.api.ok("POST", "/v1/customers", {"external_id": "fahad", "name": "Fahad",
                                              "currency": "KWD", "net_terms_days": 7})  # fmt: skip
    await st.api.ok("POST", "/v1/subscriptions",
                    {"customer": "fahad", "plan": "kw", "start": NOV.isoformat()})  # fmt: skip

    [november] = await finalized(st, DEC + HOUR)  # dated 2031-12-01 01:00
    assert november["number"] == "INV-2031-000001"
    assert november["due_at"] == "2031-12-08T01:00:00Z"  # its date + 7 days of net terms
    assert november["total"] == 4250  # KWD 4.250, exponent 3

    invoices = await finalized(st, JAN + HOUR)  # a run dated in 2032 issues 2032 invoices
    december = next(i for i in invoices if i["period_start"].startswith("2031-12"))
    assert december["number"] == "INV-2032-000001"  # a new year, a new sequence
    assert december["due_at"] == "2032-01-08T01:00:00Z"

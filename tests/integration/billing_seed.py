"""Many customers and subscriptions at once, straight into PostgreSQL (the API would take
minutes for thousands), with hourly usage for each: for replica, crash and bench runs."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert, text

from schemas.envelope import new_id
from schemas.pricing import PlanSpec
from storage.db import Sessions
from storage.invoicing import Customer, Plan, Subscription
from storage.metering import UsageHourly
from workers.invoicing import service

PLAN = PlanSpec.model_validate(
    {
        "key": "std",
        "name": "Standard",
        "currency": "USD",
        "interval": "month",
        "prices": [
            {"kind": "flat", "key": "base", "name": "Standard", "amount": "10"},
            {"kind": "per_unit", "key": "calls", "name": "Calls", "meter": "calls",
             "unit_price": "0.001", "included_quantity": "100"},
        ],
    }
)  # fmt: skip
CALLS = {"key": "calls", "event_type": "api.call", "aggregation": "count"}


async def seed(
    sessions: Sessions, tenant: str, n: int, anchor: datetime, meter_id: str, periods: int
) -> None:
    """``n`` customers ``c<i>`` with subscriptions ``s<i>`` to PLAN from ``anchor``, and
    ``i % 500 + 1`` calls in the first hour of each of the first ``periods`` periods."""
    plan_id = new_id()
    customers = [
        {"id": new_id(), "tenant_id": tenant, "external_id": f"c{i}", "name": f"Customer {i}",
         "currency": "USD", "tax_rate": Decimal("0.2"), "tax_exempt": False,
         "net_terms_days": 30}
        for i in range(n)
    ]  # fmt: skip
    start, end = service.period(anchor, "month", 0)
    subs = [
        {"tenant_id": tenant, "id": f"s{i}", "customer_id": c["id"], "plan_id": plan_id,
         "status": "active", "start": anchor, "anchor": anchor, "period_index": 0,
         "current_period_start": start, "current_period_end": end,
         "cancel_at_period_end": False}
        for i, c in enumerate(customers)
    ]  # fmt: skip
    usage = [
        {"tenant_id": tenant, "meter_id": meter_id, "subject": f"c{i}", "groups": {},
         "bucket": service.period(anchor, "month", k)[0], "count": i % 500 + 1}
        for i in range(n)
        for k in range(periods)
    ]  # fmt: skip
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Plan).values(
                id=plan_id, tenant_id=tenant, key=PLAN.key, currency="USD", interval="month",
                spec=PLAN.model_dump(mode="json"),
            )
        )  # fmt: skip
        for table, rows in ((Customer, customers), (Subscription, subs), (UsageHourly, usage)):
            for i in range(0, len(rows), 5000):
                await session.execute(insert(table), rows[i : i + 5000])


def expected_total(i: int) -> int:
    """What customer ``c<i>`` owes for one seeded period, in cents: 10.00 + calls over 100
    at 0.001 each, rounded once, plus 20 % tax on the subtotal."""
    from workers.invoicing import pricing

    calls = max(i % 500 + 1 - 100, 0)
    usage_line = pricing.to_minor(Decimal("0.001") * calls, "USD")
    subtotal = 1000 + usage_line
    return subtotal + pricing.tax_minor(subtotal, Decimal("0.2"), "USD")


async def invoice_numbers(sessions: Sessions, tenant: str) -> list[str]:
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT number FROM invoices WHERE tenant_id = :t AND number IS NOT NULL"),
            {"t": tenant},
        )
        return sorted(r[0] for r in rows)

"""Many customers and subscriptions at once, straight into PostgreSQL (the API would take
minutes for thousands), with hourly usage for each: for replica, crash and bench runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, text

from schemas.envelope import new_id
from schemas.pricing import PlanSpec
from storage.db import Sessions
from storage.invoicing import Customer, Plan, Subscription
from storage.invoicing.credits import CreditEntry, CreditGrant
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


def grant_terms(i: int) -> list[tuple[str, int, int]]:
    """The prepaid credit ``seed_grants`` gives customer ``c<i>``, as (grant id, amount in
    cents, priority): ``g<i>a`` of 300 to 4,300 cents, and for every even ``i`` also
    ``g<i>b`` of 1,500 cents at priority 10 (spent first). Against two periods of 1,200 to
    1,680 cents each: some customers' grants run out, some are left with a balance."""
    terms = [(f"g{i}a", 300 + (i % 11) * 400, 50)]
    if i % 2 == 0:
        terms.append((f"g{i}b", 1500, 10))
    return terms


async def seed_grants(sessions: Sessions, tenant: str, n: int, effective_at: datetime) -> int:
    """The grants of ``grant_terms(i)`` for the ``n`` customers ``c<i>`` that ``seed`` made,
    promotional, in effect from ``effective_at``, never expiring. Returns how many grants."""
    terms = {
        f"c{i}": [
            {"id": grant_id, "amount": amount, "source": "promotional", "priority": priority,
             "expires_at": None, "description": f"Credit {grant_id}"}
            for grant_id, amount, priority in grant_terms(i)
        ]
        for i in range(n)
    }  # fmt: skip
    return await insert_grants(sessions, tenant, terms, effective_at)


async def insert_grants(
    sessions: Sessions,
    tenant: str,
    terms: Mapping[str, Sequence[dict[str, Any]]],
    effective_at: datetime,
) -> int:
    """Grants straight into PostgreSQL as the GrantCredits command writes them: for each
    customer (by external id) its grants (``id``, ``amount``, ``source``, ``priority``,
    ``expires_at``, ``description``) in USD, in effect from ``effective_at``, each a
    ``credit_grants`` row and its ``granted`` ledger entry keyed ``granted:<grant id>``.
    Returns how many grants."""
    async with sessions() as session, session.begin():
        rows = await session.execute(
            text("SELECT external_id, id FROM customers WHERE tenant_id = :t"), {"t": tenant}
        )
        ids = {external: id for external, id in rows}
        grants: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        for external, mine in terms.items():
            customer_id = ids[external]
            for g in mine:
                grants.append(
                    {"tenant_id": tenant, "customer_id": customer_id, "currency": "USD",
                     "effective_at": effective_at, **g}
                )  # fmt: skip
                entries.append(
                    {"id": new_id(), "tenant_id": tenant, "grant_id": g["id"],
                     "customer_id": customer_id, "kind": "granted", "amount": g["amount"],
                     "at": effective_at, "invoice_id": None, "key": f"granted:{g['id']}",
                     "reason": None}
                )  # fmt: skip
        for table, values in ((CreditGrant, grants), (CreditEntry, entries)):
            for k in range(0, len(values), 5000):
                await session.execute(insert(table), values[k : k + 5000])
    return len(grants)

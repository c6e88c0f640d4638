"""A payer's spend alert counts the usage billed in its sections (docs/hierarchies.md): the
projection of its invoice is computed as the invoice will be, with each customer invoiced
to it priced on its own usage."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import insert

from schemas.envelope import new_id
from storage.invoicing import Customer
from storage.metering import UsageHourly
from tests.conftest import TenantKey
from tests.integration.alerts_support import create_rule, settled, stored
from tests.integration.billing_seed import CALLS, seed
from tests.integration.support import Sessions, insert_meters, producer, send_usage, usage
from tests.integration.test_alerts import workers
from workers.settings import Settings


async def test_a_payers_spend_counts_the_customers_it_bills(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = (await insert_meters(sessions, t, [CALLS]))["calls"]
    # c0: 10 USD a month + 0.001 USD per call above 100 included, 20 % tax; 1 call seeded
    await seed(sessions, t, 1, month, calls.id, 1)
    async with sessions() as session, session.begin():
        await session.execute(insert(Customer).values(
            id=new_id(), tenant_id=t, external_id="k1", name="Kiosk 1", currency="USD",
            tax_exempt=False, net_terms_days=30, parent="c0", invoice_to="parent",
        ))  # fmt: skip
        await session.execute(insert(UsageHourly).values(
            tenant_id=t, meter_id=calls.id, subject="k1", groups={}, bucket=month, count=1000,
        ))  # fmt: skip
    async with producer(settings) as p, workers(settings):
        rule = {"kind": "spend_threshold", "currency": "USD", "thresholds": [1200, 1300]}
        await create_rule(p, sessions, t, "spend", rule)
        await send_usage(p, [usage(t, "a1", subject="c0", time=now)])
        await settled(settings, sessions)
        # c0: 10.00 + 2 calls within its 100 included; k1's section: (1,000 - 100) x 0.001
        # = 0.90; 10.90 + 20 % = 13.08 — both thresholds (without the section: 12.00, one)
        raised = {a.threshold: a.value for a in await stored(sessions, t)}
        assert raised == {Decimal(1200): Decimal(1308), Decimal(1300): Decimal(1308)}


async def test_usage_of_a_customer_invoiced_to_its_parent_alerts_the_payer(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = (await insert_meters(sessions, t, [CALLS]))["calls"]
    await seed(sessions, t, 1, month, calls.id, 1)  # c0 as above, 1 call
    async with sessions() as session, session.begin():
        # k2 billed on k1's payer c0 through k1 (itself invoiced to its parent)
        for external_id, parent in (("k1", "c0"), ("k2", "k1")):
            await session.execute(insert(Customer).values(
                id=new_id(), tenant_id=t, external_id=external_id, name=external_id,
                currency="USD", tax_exempt=False, net_terms_days=30, parent=parent,
                invoice_to="parent",
            ))  # fmt: skip
    async with producer(settings) as p, workers(settings):
        rule = {"kind": "spend_threshold", "currency": "USD", "thresholds": [1300]}
        await create_rule(p, sessions, t, "spend", rule)
        # only k2's usage arrives: 1,100 calls, (1,100 - 100) x 0.001 = 1.00 in its section
        await send_usage(p, [usage(t, f"k{i}", subject="k2", time=now) for i in range(1100)])
        await settled(settings, sessions)
        # 10.00 + 1.00 + 20 % = 13.20, raised for c0 (the payer), not for k2
        [alert] = await stored(sessions, t)
        assert (alert.subject, alert.threshold, alert.value) == ("c0", Decimal(1300), Decimal(1320))

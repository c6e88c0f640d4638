"""Spend alerts count tax as the invoice will (docs/taxes.md): a customer whose tax comes
from a named rate, not a bare ``tax_rate``, is alerted on its spend with that rate's tax."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import text

from storage.invoicing.taxes import TaxRateRepository
from tests.conftest import TenantKey
from tests.integration.alerts_support import create_rule, settled, stored
from tests.integration.billing_seed import CALLS, seed
from tests.integration.support import Sessions, insert_meters, producer, send_usage, usage
from tests.integration.test_alerts import workers
from workers.settings import Settings


async def test_spend_counts_the_customers_named_rates(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = (await insert_meters(sessions, t, [CALLS]))["calls"]
    # c0: 10 USD a month + 0.001 USD per call above 100 included; its 20 % tax now comes
    # from a rate named "vat" (the seed's bare tax_rate removed)
    await seed(sessions, t, 1, month, calls.id, 1)
    async with sessions() as session, session.begin():
        await TaxRateRepository(session).upsert(t, {
            "id": "vat-20", "name": "vat", "display_name": "VAT", "percentage": Decimal(20),
            "inclusive": False, "country": "GB", "taxable_base_factor": "1",
        }, now)  # fmt: skip
        await session.execute(
            text(
                "UPDATE customers SET tax_rate = NULL, tax_rates = '[\"vat\"]' WHERE tenant_id = :t"
            ),
            {"t": t},
        )
    async with producer(settings) as p, workers(settings):
        rule = {"kind": "spend_threshold", "currency": "USD", "thresholds": [1100, 1200]}
        await create_rule(p, sessions, t, "spend", rule)
        await send_usage(p, [usage(t, "a1", subject="c0", time=now)])
        await settled(settings, sessions)
        # 10.00 USD and 20 % VAT: 12.00 — both thresholds (without the rate: 10.00, none)
        raised = {a.threshold: a.value for a in await stored(sessions, t)}
        assert raised == {Decimal(1100): Decimal(1200), Decimal(1200): Decimal(1200)}

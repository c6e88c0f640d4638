"""A credit note on an invoice in collection: payments collects only what is still due, and
stops when a note covers it all (real payments and invoicing workers, localstripe)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tests.conftest import TenantKey
from tests.integration.payments_support import (
    finalized,
    payment_events,
    payments_settings,
    publish_invoices,
    seed_invoice,
    wait_events,
)
from tests.integration.support import Sessions, running
from tests.integration.test_payments import of, stack, stripe_base
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings

__all__ = ["stripe_base"]  # the localstripe fixture


async def test_a_note_lowers_what_is_collected_and_one_that_covers_it_stops_collection(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str
) -> None:
    settings = payments_settings(settings, stripe_base, dunning_schedule_days=[3.0])
    await seed_invoice(sessions, tenant.tenant_id, "inv-cn", "nina", 4_200)
    async with stack(settings, tenant, stripe_base) as s, running(build_invoicing(settings)):
        await publish_invoices(settings, [finalized(tenant.tenant_id, "inv-cn", "nina", 4_200)])
        # nina has no card: the first attempt fails and the collection waits for its retry
        await wait_events(settings, of("payment.failed", "inv-cn"))

        async def collection() -> tuple[str, int]:
            async with sessions() as db:
                row = (
                    await db.execute(
                        text("SELECT status, amount FROM payment_collections"
                             " WHERE invoice_id = 'inv-cn'")
                    )
                ).one()  # fmt: skip
                return str(row[0]), int(row[1])

        async def collecting(expected: tuple[str, int]) -> bool:
            return await collection() == expected

        await wait_for(lambda: collecting(("due", 4_200)), timeout_s=20)
        # 12.00 off (no tax: the seeded invoice has rate 0): 42.00 - 12.00 = 30.00 collected
        r = await s.api.command(
            "POST", "/v1/invoices/inv-cn/credit-notes", {"reason": "order_change", "amount": 1_200}
        )
        assert r["status"] == "succeeded", r
        await wait_for(lambda: collecting(("due", 3_000)), timeout_s=20)
        # the rest: nothing is due, the invoice is paid and the collection stops
        r = await s.api.command(
            "POST", "/v1/invoices/inv-cn/credit-notes", {"reason": "order_change", "amount": 3_000}
        )
        assert r["status"] == "succeeded", r
        await wait_for(lambda: collecting(("cancelled", 3_000)), timeout_s=20)
        invoice: dict[str, Any] = await s.api.get("/v1/invoices/inv-cn")
        assert (invoice["status"], invoice["amount_credited"], invoice["amount_due"]) == (
            "paid", 4_200, 0,
        )  # fmt: skip
        s.clock.advance(days=3, seconds=1)  # the retry that would have come
        await wait_for(lambda: collecting(("cancelled", 3_000)), timeout_s=5)
        events = [e for e in await payment_events(settings) if e["data"]["invoice_id"] == "inv-cn"]
        assert [e["type"] for e in events] == ["payment.failed"]

"""A credit top-up collected through Stripe: the real ingress, the invoicing and payments
workers, the real broker and PostgreSQL, and localstripe (through the official SDK). The
top-up's invoice is charged to the customer's card; the grant takes effect when invoicing
records the payment."""

from __future__ import annotations

from typing import Any

from tests.conftest import TenantKey
from tests.integration.payments_support import CARD_OK, intents, payments_settings
from tests.integration.support import running
from tests.integration.test_payments import customer_with_card, stack, stripe_base
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings

__all__ = ["stripe_base"]  # the localstripe fixture, used by the test below


async def test_a_top_up_is_charged_through_stripe_and_granted_when_paid(
    settings: Settings, tenant: TenantKey, stripe_base: str
) -> None:
    settings = payments_settings(settings, stripe_base)
    async with stack(settings, tenant, stripe_base) as s, running(build_invoicing(settings)):
        await s.api.ok(
            "POST",
            "/v1/customers",
            {"external_id": "resto", "name": "Resto", "currency": "USD", "tax_rate": "0.11"},
        )
        await customer_with_card(s, stripe_base, "resto", CARD_OK)
        # 150.00 of credit for 135.00; after tax (the default) the top-up carries no tax
        r = await s.api.send(
            "POST",
            "/v1/customers/resto/credits/top-ups",
            {"id": "tu-1", "amount": 15_000, "purchase_amount": 13_500},
        )
        assert r.status_code == 202, r.text
        outcome = await s.api.outcome(r.json()["command_id"])
        assert outcome["status"] == "succeeded", outcome
        invoice_id = outcome["result"]["invoice_id"]

        async def granted() -> dict[str, Any] | None:
            grant: dict[str, Any] = await s.api.get("/v1/credit-grants/tu-1")
            return grant if grant["status"] == "active" else None

        grant = await wait_for(granted, timeout_s=30)
        assert (grant["balance"], grant["invoice_id"]) == (15_000, invoice_id)
        invoice = await s.api.get(f"/v1/invoices/{invoice_id}")
        assert (invoice["status"], invoice["total"], invoice["amount_paid"]) == (
            "paid",
            13_500,
            13_500,
        )
        charged = [i for i in await intents(stripe_base)
                   if i["metadata"]["billstream_invoice"] == invoice_id]  # fmt: skip
        assert [(i["amount"], i["currency"], i["status"]) for i in charged] == [
            (13_500, "usd", "succeeded")
        ]
        ledger = await s.api.get("/v1/customers/resto/credits/ledger")
        assert [(e["kind"], e["amount"], e["invoice_id"]) for e in ledger] == [
            ("topped_up", 15_000, invoice_id)
        ]

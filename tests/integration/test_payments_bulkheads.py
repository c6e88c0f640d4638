"""Bulkheads in collection and dunning: one tenant's invoice whose processing fails
permanently (its data, not a decline, not Stripe being down) is quarantined with its
reason and an ``ops.quarantined`` event, the tenant's ``job_quarantined`` rule raises an
alert, and every other tenant's invoice is still collected, and paid, in the same run.

Real PostgreSQL and broker, the real payments, invoicing and alerts workers, and
localstripe through the official SDK, as in test_payments.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from schemas import topics
from storage.payments import Collection, Payment, StripeAccount
from storage.quarantine import Entry, QuarantineRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.alerts_support import create_rule, stored
from tests.integration.http import Client
from tests.integration.payments_support import (
    CARD_OK,
    SECRET_KEY,
    WEBHOOK_SECRET,
    card,
    finalized,
    intents,
    localstripe,
    payments_settings,
    publish_invoices,
    seed_invoice,
    wait_events,
)
from tests.integration.support import Sessions, producer, read_all, running
from tests.integration.test_payments import Stack, stack
from workers.alerts.app import build as build_alerts
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings

JOB_QUARANTINED = {"kind": "operational", "condition": "job_quarantined"}


@pytest.fixture
def stripe_base(tmp_path: Path) -> Iterator[str]:
    with localstripe(tmp_path / "localstripe.log") as base:
        yield base


async def configure(api: Client) -> None:
    r = await api.send(
        "PUT",
        "/v1/integrations/stripe",
        {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET},
    )
    assert r.status_code == 202, r.text
    outcome = await api.outcome(r.json()["command_id"])
    assert outcome["status"] == "succeeded", outcome


async def with_card(api: Client, stripe_base: str, customer: str) -> None:
    await api.ok("POST", f"/v1/customers/{customer}/stripe", {"email": "a@b.example"})
    pm = await card(stripe_base, CARD_OK)
    await api.ok("POST", f"/v1/customers/{customer}/payment-methods", {"payment_method": pm})


async def second_tenant(s: Stack, sessions: Sessions, stripe_base: str, name: str) -> Client:
    api = Client(s.http, await make_tenant(sessions, name))
    await configure(api)
    return api


async def quarantined(sessions: Sessions, tenant: str) -> list[Entry]:
    async with sessions() as db:
        return await QuarantineRepository(db).list(tenant)


async def collection_of(sessions: Sessions, tenant: str, invoice: str) -> Collection | None:
    async with sessions() as db:
        return await db.get(Collection, (tenant, invoice))


async def ops_events(settings: Settings) -> list[dict[str, Any]]:
    records = (await read_all(settings, topics.EVENTS_OPS))[0]
    return [json.loads(r.value) for r in records]


def paid(invoice: str) -> Any:
    return lambda e: e["type"] == "payment.succeeded" and e["data"]["invoice_id"] == invoice


async def test_one_tenants_broken_invoice_is_quarantined_and_alerted_and_others_are_collected(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str
) -> None:
    """Tenant A's invoice has a broken row (a payment for its next attempt already exists, so
    claiming it violates a unique constraint, every time): it used to fail the whole claim
    of every tick, so no tenant was ever collected again. Now it is quarantined, A is
    alerted, and B's invoice is collected and paid."""
    a = tenant.tenant_id
    settings = payments_settings(settings, stripe_base)
    inv_a, inv_b = "inv-a-0001", "inv-b-0001"
    async with stack(settings, tenant, stripe_base) as s:
        b_api = await second_tenant(s, sessions, stripe_base, "globex")
        b = b_api.key.tenant_id
        await with_card(s.api, stripe_base, "alice")
        await with_card(b_api, stripe_base, "bob")
        await seed_invoice(sessions, a, inv_a, "alice", 1_500)
        await seed_invoice(sessions, b, inv_b, "bob", 2_500)
        async with sessions() as db, db.begin():  # A's corrupt row
            db.add(
                Payment(
                    tenant_id=a, id="pay_stray", invoice_id=inv_a, customer="alice",
                    amount=1_500, currency="USD", method="card", attempt=1, state="failed",
                    amount_refunded=0, disputed=False,
                )
            )  # fmt: skip
        async with running(build_invoicing(settings)), running(build_alerts(settings)):
            async with producer(settings) as p:
                await create_rule(p, sessions, a, "quarantine", JOB_QUARANTINED)
                await create_rule(p, sessions, b, "quarantine", JOB_QUARANTINED)
            # A first, and tried, so that B's invoice is claimed together with it after
            await publish_invoices(settings, [finalized(a, inv_a, "alice", 1_500)])
            await wait_for(lambda: collection_of(sessions, a, inv_a), timeout_s=20)
            await publish_invoices(settings, [finalized(b, inv_b, "bob", 2_500)])

            (event,) = await wait_events(settings, paid(inv_b))
            assert event["tenantid"] == b and event["data"]["amount"] == 2_500

            async def invoice_paid() -> bool:
                body = await b_api.get(f"/v1/invoices/{inv_b}")
                return bool(body["status"] == "paid")

            await wait_for(invoice_paid, timeout_s=20)

            [entry] = await wait_for(lambda: quarantined(sessions, a), timeout_s=20)
            assert (entry.job, entry.kind, entry.item_id) == ("payments.collect", "invoice", inv_a)
            assert entry.error == "IntegrityError"
            assert "uq_payments_tenant_id_invoice_id_attempt" in entry.reason
            assert await quarantined(sessions, b) == []

            async def alerted() -> list[Any] | None:
                return await stored(sessions, a, rule="quarantine") or None

            [alert] = await wait_for(alerted, timeout_s=20)
            assert (alert.state, alert.condition, alert.about_type, alert.about_id) == (
                "firing", "job_quarantined", "quarantine", entry.id,
            )  # fmt: skip
            assert alert.about_href == f"billstream quarantine show {entry.id}"
            assert "payments.collect" in alert.message and inv_a in alert.message
            assert await stored(sessions, b) == []

        # A was not charged, and is not claimed again while quarantined
        charged = {i["metadata"]["billstream_invoice"] for i in await intents(stripe_base)}
        assert charged == {inv_b}
        assert (await s.api.get(f"/v1/invoices/{inv_a}"))["status"] == "finalized"
        events = [e for e in await ops_events(settings) if e["type"] == "ops.quarantined"]
        assert [(e["tenantid"], e["data"]["item_id"]) for e in events] == [(a, inv_a)]


async def test_an_attempt_failing_on_one_tenants_data_is_quarantined_not_resumed_forever(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str
) -> None:
    """Tenant A's Stripe secret cannot be decrypted (saved under a key since dropped): its
    attempt fails before Stripe is called, for a reason of A's own. It used to be resumed
    after every lease, for ever, and nobody was told; now the invoice is quarantined with
    the reason. B's invoice is collected meanwhile."""
    a = tenant.tenant_id
    settings = payments_settings(settings, stripe_base, payments_attempt_lease_s=1.0)
    inv_a, inv_b = "inv-a-0002", "inv-b-0002"
    async with stack(settings, tenant, stripe_base) as s:
        b_api = await second_tenant(s, sessions, stripe_base, "initech")
        b = b_api.key.tenant_id
        await with_card(s.api, stripe_base, "alice")
        await with_card(b_api, stripe_base, "bob")
        async with sessions() as db, db.begin():
            await db.execute(
                update(StripeAccount)
                .where(StripeAccount.tenant_id == a)
                .values(secret_key="enc:gAAAAABnot-a-valid-fernet-token")
            )
        await publish_invoices(
            settings, [finalized(a, inv_a, "alice", 1_500), finalized(b, inv_b, "bob", 2_500)]
        )
        await wait_events(settings, paid(inv_b))
        [entry] = await wait_for(lambda: quarantined(sessions, a), timeout_s=20)
        assert (entry.job, entry.kind, entry.item_id) == ("payments.collect", "invoice", inv_a)
        assert entry.error == "SecretUnreadable"
        assert "cannot be decrypted" in entry.reason

        # quarantined, it is not claimed again once its lease ran out: B's next invoice,
        # due after that, is collected by later ticks, and A's still has its one attempt
        s.clock.advance(seconds=5)
        await publish_invoices(settings, [finalized(b, "inv-b-0003", "bob", 700)])
        await wait_events(settings, paid("inv-b-0003"))
        c = await collection_of(sessions, a, inv_a)
        assert c is not None and (c.status, c.attempts) == ("in_flight", 1)
        async with sessions() as db:
            attempts = list(await db.scalars(select(Payment.attempt).where(Payment.tenant_id == a)))
        assert attempts == [1]
        assert [e.item_id for e in await quarantined(sessions, a)] == [inv_a]
        charged = {i["metadata"]["billstream_invoice"] for i in await intents(stripe_base)}
        assert charged == {inv_b, "inv-b-0003"}

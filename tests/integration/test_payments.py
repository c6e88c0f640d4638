"""Payments end to end: the real ingress, the payments worker, the real broker and
PostgreSQL, and localstripe (driven through the official SDK) delivering signed webhooks
to our ingress. Finalized invoices are published on the invoicing topic, as invoicing does."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from schemas import topics
from storage.payments import StripeAccount, StripeEventSeen
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client, ingress
from tests.integration.payments_support import (
    CARD_DECLINED,
    CARD_DECLINED_ON_CHARGE,
    CARD_OK,
    SECRET_KEY,
    WEBHOOK_SECRET,
    Clock,
    card,
    finalized,
    intents,
    localstripe,
    payment_events,
    payments_settings,
    publish_invoices,
    seed_invoice,
    send_webhooks_to,
    wait_events,
)
from tests.integration.support import Sessions, read_all, running
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.payments.app import build
from workers.payments.signature import header
from workers.settings import Settings


@pytest.fixture
def stripe_base(tmp_path: Path) -> Iterator[str]:
    with localstripe(tmp_path / "localstripe.log") as base:
        yield base


@dataclass
class Stack:
    settings: Settings
    api: Client
    http: httpx.AsyncClient
    base: str
    webhook_path: str
    clock: Clock


@contextlib.asynccontextmanager
async def stack(settings: Settings, tenant: TenantKey, stripe_base: str) -> AsyncIterator[Stack]:
    clock = Clock()
    worker = build(settings, clock=clock)
    async with (
        ingress(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=20) as http,
        running(worker),
    ):
        api = Client(http, tenant)
        r = await api.send(
            "PUT",
            "/v1/integrations/stripe",
            {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET},
        )
        assert r.status_code == 202, r.text
        assert SECRET_KEY not in r.text and WEBHOOK_SECRET not in r.text
        path = r.json()["webhook_path"]
        outcome = await api.outcome(r.json()["command_id"])
        assert outcome["status"] == "succeeded", outcome
        assert SECRET_KEY not in json.dumps(outcome)
        yield Stack(settings, api, http, base, path, clock)


async def customer_with_card(s: Stack, stripe_base: str, customer: str, number: str) -> str:
    synced = await s.api.ok("POST", f"/v1/customers/{customer}/stripe", {"email": "a@b.example"})
    assert synced["stripe_customer_id"].startswith("cus_")
    pm = await card(stripe_base, number)
    await s.api.ok("POST", f"/v1/customers/{customer}/payment-methods", {"payment_method": pm})
    return str(synced["stripe_customer_id"])


def of(type_: str, invoice: str) -> Any:
    return lambda e: e["type"] == type_ and e["data"]["invoice_id"] == invoice


async def test_collects_a_finalized_invoice_and_takes_stripes_webhooks_end_to_end(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str
) -> None:
    settings = payments_settings(settings, stripe_base)
    async with stack(settings, tenant, stripe_base) as s:
        await send_webhooks_to(stripe_base, s.base + s.webhook_path)
        await customer_with_card(s, stripe_base, "alice", CARD_OK)
        await publish_invoices(
            settings,
            [
                finalized(tenant.tenant_id, "inv-usd", "alice", 12_345, "USD"),
                finalized(tenant.tenant_id, "inv-jpy", "alice", 5_000, "JPY"),
                finalized(tenant.tenant_id, "inv-kwd", "alice", 1_230, "KWD"),
            ],
        )
        for invoice in ("inv-usd", "inv-jpy", "inv-kwd"):
            (paid,) = await wait_events(settings, of("payment.succeeded", invoice))
            assert paid["data"]["method"] == "card"
        charged = {i["metadata"]["billstream_invoice"]: i for i in await intents(stripe_base)}
        assert {k: (v["amount"], v["currency"], v["status"]) for k, v in charged.items()} == {
            "inv-usd": (12_345, "usd", "succeeded"),
            "inv-jpy": (5_000, "jpy", "succeeded"),  # zero-decimal: whole yen
            "inv-kwd": (1_230, "kwd", "succeeded"),  # three decimals, the last one 0
        }

        # localstripe sends payment_intent.succeeded, signed, to our ingress: verified,
        # recorded once, published; the payment is already succeeded, so no new event
        async def webhooks_in() -> bool:
            async with sessions() as db:
                seen = await db.scalars(
                    select(StripeEventSeen.type).where(
                        StripeEventSeen.tenant_id == tenant.tenant_id
                    )
                )
                return list(seen).count("payment_intent.succeeded") == 3

        await wait_for(webhooks_in, timeout_s=20)

        async def relayed() -> bool:
            records = (await read_all(settings, topics.INTEGRATIONS_STRIPE))[0]
            types = [json.loads(r.value)["data"]["type"] for r in records]
            return types.count("payment_intent.succeeded") == 3

        await wait_for(relayed, timeout_s=20)
        view = await s.api.get("/v1/invoices/inv-usd/payments")
        assert view["collection"]["status"] == "succeeded"
        (payment,) = view["payments"]
        assert payment["state"] == "succeeded" and payment["amount"] == 12_345

        # a partial refund, then the rest
        refund = await s.api.ok("POST", f"/v1/payments/{payment['id']}/refunds", {"amount": 345})
        assert refund["amount"] == 345 and refund["stripe_refund_id"].startswith("re_")
        rest = await s.api.ok("POST", f"/v1/payments/{payment['id']}/refunds", {})
        assert rest["amount"] == 12_000
        too_much = await s.api.command("POST", f"/v1/payments/{payment['id']}/refunds", {})
        assert too_much["status"] == "failed", too_much
        refunded = await wait_events(settings, of("payment.refunded", "inv-usd"), count=2)
        assert [e["data"]["amount_refunded"] for e in refunded] == [345, 12_345]
        assert (
            len([e for e in await payment_events(settings) if e["type"] == "payment.succeeded"])
            == 3
        )

        # another tenant sees none of it and cannot refund it
        other = Client(s.http, await make_tenant(sessions, "other"))
        r = await other.http.get("/v1/invoices/inv-usd/payments", headers=other.auth)
        assert r.status_code == 404, r.text
        r = await other.send("POST", f"/v1/payments/{payment['id']}/refunds", {})
        assert r.status_code == 404, r.text

        # nothing we publish or store carries a secret in clear
        for record in (await read_all(settings, topics.COMMANDS_PAYMENTS))[0]:
            assert SECRET_KEY.encode() not in record.value
            assert WEBHOOK_SECRET.encode() not in record.value
        async with sessions() as db:
            account = await db.get(StripeAccount, tenant.tenant_id)
            assert account is not None and account.secret_key.startswith("enc:")
            assert SECRET_KEY not in account.secret_key


async def test_a_decline_is_retried_on_the_dunning_schedule_then_succeeds_or_exhausts(
    settings: Settings, tenant: TenantKey, stripe_base: str
) -> None:
    settings = payments_settings(settings, stripe_base)
    async with stack(settings, tenant, stripe_base) as s:
        await customer_with_card(s, stripe_base, "bob", CARD_DECLINED_ON_CHARGE)
        await customer_with_card(s, stripe_base, "carol", CARD_DECLINED_ON_CHARGE)
        start = s.clock.now
        await publish_invoices(
            settings,
            [
                finalized(tenant.tenant_id, "inv-bob", "bob", 2_000),
                finalized(tenant.tenant_id, "inv-carol", "carol", 3_000),
            ],
        )
        (failed,) = await wait_events(settings, of("payment.failed", "inv-bob"))
        assert failed["data"]["failure_code"] == "card_declined"
        assert failed["data"]["attempt"] == 1
        await wait_events(settings, of("payment.failed", "inv-carol"))

        # 4000000000000002 is declined when attached: the command fails, saying so
        bad = await card(stripe_base, CARD_DECLINED)
        outcome = await s.api.command(
            "POST", "/v1/customers/bob/payment-methods", {"payment_method": bad}
        )
        assert outcome["status"] == "failed" and outcome["error"]["code"] == "card_declined"
        good = await card(stripe_base, CARD_OK)
        await s.api.ok("POST", "/v1/customers/bob/payment-methods", {"payment_method": good})

        s.clock.advance(days=2, hours=23)  # not due yet
        s.clock.advance(hours=1, seconds=1)  # 3 days after the failure: the first retry
        (paid,) = await wait_events(settings, of("payment.succeeded", "inv-bob"))
        assert paid["data"]["amount"] == 2_000
        await wait_events(settings, of("payment.failed", "inv-carol"), count=2)
        s.clock.advance(days=5, seconds=1)
        await wait_events(settings, of("payment.failed", "inv-carol"), count=3)
        s.clock.advance(days=7, seconds=1)
        carol_failed = await wait_events(settings, of("payment.failed", "inv-carol"), count=4)
        assert [e["data"]["attempt"] for e in carol_failed] == [1, 2, 3, 4]
        assert "next_attempt_at" not in carol_failed[-1]["data"]  # no retry after the last
        (gone,) = await wait_events(settings, of("payment.dunning_exhausted", "inv-carol"))
        assert gone["data"]["attempts"] == 4
        assert s.clock.now - start > timedelta(days=15)

        view = await s.api.get("/v1/invoices/inv-bob/payments")
        assert [p["state"] for p in view["payments"]] == ["failed", "succeeded"]
        assert (await s.api.get("/v1/invoices/inv-carol/payments"))["collection"][
            "status"
        ] == "exhausted"
        charged = [i for i in await intents(stripe_base) if i["status"] == "succeeded"]
        assert [i["metadata"]["billstream_invoice"] for i in charged] == ["inv-bob"]


async def test_stripe_webhooks_need_a_valid_fresh_signature_and_never_move_a_payment_back(
    settings: Settings, tenant: TenantKey, stripe_base: str
) -> None:
    settings = payments_settings(settings, stripe_base)
    async with stack(settings, tenant, stripe_base) as s:
        await customer_with_card(s, stripe_base, "dan", CARD_OK)
        await publish_invoices(settings, [finalized(tenant.tenant_id, "inv-dan", "dan", 900)])
        (paid,) = await wait_events(settings, of("payment.succeeded", "inv-dan"))
        (intent,) = await intents(stripe_base)

        async def post(event: dict[str, Any], signature: str | None) -> httpx.Response:
            body = json.dumps(event).encode()
            headers = {"Content-Type": "application/json"}
            if signature is not None:
                headers["Stripe-Signature"] = signature
            return await s.http.post(s.webhook_path, content=body, headers=headers)

        def event(id: str, type: str, obj: dict[str, Any]) -> dict[str, Any]:
            return {"id": id, "type": type, "created": int(time.time()), "data": {"object": obj}}

        late_failure = event("evt_late", "payment_intent.payment_failed", intent)
        body = json.dumps(late_failure).encode()
        now = int(time.time())
        assert (await post(late_failure, None)).status_code == 400
        assert (await post(late_failure, header(body, ["whsec_wrong"], now))).status_code == 400
        stale = header(body, [WEBHOOK_SECRET], now - 301)
        assert (await post(late_failure, stale)).status_code == 400
        tampered = dict(late_failure, type="payment_intent.succeeded")
        assert (await post(tampered, header(body, [WEBHOOK_SECRET], now))).status_code == 400
        assert (await read_all(settings, topics.INTEGRATIONS_STRIPE))[0] == []

        # rotation: Stripe signs with the old and the new secret while both are live
        rotated = header(body, ["whsec_new_one", WEBHOOK_SECRET], now)
        r = await post(late_failure, rotated)
        assert r.status_code == 200 and r.json() == {"received": True, "duplicate": False}
        again = await post(late_failure, header(body, [WEBHOOK_SECRET], now))
        assert again.json()["duplicate"] is True

        dispute = event(
            "evt_dispute",
            "charge.dispute.created",
            {"id": "dp_1", "object": "dispute", "charge": intent["latest_charge"]["id"],
             "payment_intent": intent["id"], "amount": 900, "reason": "fraudulent"},
        )  # fmt: skip
        dbody = json.dumps(dispute).encode()
        assert (await post(dispute, header(dbody, [WEBHOOK_SECRET], now))).status_code == 200
        refunded = event(
            "evt_refund",
            "charge.refunded",
            {"id": intent["latest_charge"]["id"], "object": "charge",
             "payment_intent": intent["id"], "amount": 900, "amount_refunded": 400,
             "refunds": {"data": [{"id": "re_outside"}]}},
        )  # fmt: skip
        rbody = json.dumps(refunded).encode()
        assert (await post(refunded, header(rbody, [WEBHOOK_SECRET], now))).status_code == 200

        (disputed,) = await wait_events(settings, of("payment.disputed", "inv-dan"))
        assert disputed["data"]["reason"] == "fraudulent"
        assert disputed["data"]["payment_id"] == paid["data"]["payment_id"]
        (ref,) = await wait_events(settings, of("payment.refunded", "inv-dan"))
        assert ref["data"]["amount"] == 400 and ref["data"]["refund_id"] == "re_outside"

        # the late failure changed nothing: still succeeded, no payment.failed
        view = await s.api.get("/v1/invoices/inv-dan/payments")
        assert [p["state"] for p in view["payments"]] == ["succeeded"]
        assert view["payments"][0]["amount_refunded"] == 400
        assert not [e for e in await payment_events(settings) if e["type"] == "payment.failed"]


async def test_invoicing_marks_invoices_paid_by_offline_payments_and_uncollectible_after_dunning(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str
) -> None:
    settings = payments_settings(settings, stripe_base, dunning_schedule_days=[3.0])
    for invoice, customer in (("inv-cash", "frank"), ("inv-lost", "gina"), ("inv-void", "hana")):
        await seed_invoice(sessions, tenant.tenant_id, invoice, customer, 4_200)
    invoicing = build_invoicing(settings)
    async with stack(settings, tenant, stripe_base) as s, running(invoicing):
        await customer_with_card(s, stripe_base, "gina", CARD_DECLINED_ON_CHARGE)
        await customer_with_card(s, stripe_base, "hana", CARD_DECLINED_ON_CHARGE)
        await publish_invoices(
            settings,
            [
                finalized(tenant.tenant_id, "inv-cash", "frank", 4_200),
                finalized(tenant.tenant_id, "inv-lost", "gina", 4_200),
                finalized(tenant.tenant_id, "inv-void", "hana", 4_200),
            ],
        )
        # frank has no card in Stripe: the collection fails and waits for a retry ...
        (failed,) = await wait_events(settings, of("payment.failed", "inv-cash"))
        assert failed["data"]["failure_code"] == "no_stripe_customer"
        # ... and he pays by bank transfer meanwhile
        done = await s.api.ok(
            "POST",
            "/v1/invoices/inv-cash/offline-payments",
            {"amount": 4_200, "method": "bank_transfer", "reference": "SEPA 42"},
        )
        (paid,) = await wait_events(settings, of("payment.succeeded", "inv-cash"))
        assert paid["data"]["method"] == "bank_transfer"
        assert paid["data"]["payment_id"] == done["payment_id"]

        async def invoice_status(id: str, expected: str) -> dict[str, Any] | None:
            body: dict[str, Any] = await s.api.get(f"/v1/invoices/{id}")
            return body if body["status"] == expected else None

        cash = await wait_for(lambda: invoice_status("inv-cash", "paid"), timeout_s=20)
        assert cash["amount_paid"] == 4_200
        # a paid invoice takes no more, and none may pay more than is due: refused at the door
        for invoice, amount, due in (("inv-cash", 1, 0), ("inv-lost", 4_201, 4_200)):
            r = await s.api.send(
                "POST",
                f"/v1/invoices/{invoice}/offline-payments",
                {"amount": amount, "method": "cash"},
            )
            assert r.status_code == 422, r.text
            reason = f"exceeds the invoice's amount due ({due} in minor units of USD)"
            assert r.json()["errors"] == [{"field": "amount", "reason": reason}]

        await wait_events(settings, of("payment.failed", "inv-lost"))
        await wait_events(settings, of("payment.failed", "inv-void"))
        # a voided invoice is not retried
        await s.api.ok("POST", "/v1/invoices/inv-void/void", {"reason": "duplicate"})

        async def cancelled() -> bool:
            view = await s.api.get("/v1/invoices/inv-void/payments")
            return bool(view["collection"]["status"] == "cancelled")

        await wait_for(cancelled, timeout_s=20)
        r = await s.api.send(
            "POST", "/v1/invoices/inv-void/offline-payments", {"amount": 1, "method": "cash"}
        )
        assert r.status_code == 409, r.text
        assert r.json()["type"] == "urn:billstream:problem:invoice_not_payable"
        s.clock.advance(days=3, seconds=1)  # the only retry fails too
        await wait_events(settings, of("payment.dunning_exhausted", "inv-lost"))
        lost = await wait_for(lambda: invoice_status("inv-lost", "uncollectible"), timeout_s=20)
        assert lost["amount_paid"] == 0
        voided = [
            e for e in await payment_events(settings) if e["data"]["invoice_id"] == "inv-void"
        ]
        assert [e["type"] for e in voided] == ["payment.failed"]
        # the settled collection of inv-cash was not retried
        view = await s.api.get("/v1/invoices/inv-cash/payments")
        assert view["collection"]["status"] == "settled"
        assert [(p["method"], p["state"]) for p in view["payments"]] == [
            ("card", "failed"),
            ("bank_transfer", "succeeded"),
        ]

"""Replaying the invoicing consumer groups' topics from the beginning (``billstream replay
--group``) changes no credit balance: grants, a top-up paid by a payment event, a billing
run that applied credits and a void that returned them are all read again, recognised and
skipped. The balances, the ledger (over HTTP and in PostgreSQL) and the events on
billstream.events.invoicing.v1 are the same afterwards."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import text

from schemas import groups, topics
from schemas.payments import PaymentData, PaymentSucceeded
from tests.conftest import KafkaServer, TenantKey
from tests.integration.support import (
    Sessions,
    producer,
    quick_rejoin,
    read_all,
    running,
    wait_committed_to_end,
    wait_outbox_drained,
)
from tests.integration.test_credits import METER, customer, grant, plan
from tests.integration.test_invoicing import Stack, stack
from tests.integration.test_ops_replay import no_members
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
LATER = (NOV + 2 * HOUR).isoformat()

# the invoicing worker's consumer groups and what they read
READS = [
    (groups.INVOICING_COMMANDS, topics.COMMANDS_INVOICING),
    (groups.INVOICING_PAYMENTS, topics.EVENTS_PAYMENTS),
]


def deduplicated(group: str, topic: str) -> float:
    value = REGISTRY.get_sample_value(
        "billstream_messages_deduplicated_total", {"group": group, "topic": topic}
    )
    return value or 0.0


async def state(st: Stack, sessions: Sessions, now: str) -> dict[str, Any]:
    """What a replay must not change: the balances and the ledger as the API shows them
    (as of ``now`` and of after the run), and every ledger row, grant and invoice in
    PostgreSQL."""
    async with sessions() as db:
        entries = [
            tuple(r)
            for r in await db.execute(
                text(
                    "SELECT seq, id, key, grant_id, kind, amount, at, invoice_id"
                    " FROM credit_entries ORDER BY seq"
                )
            )
        ]
        grants = [tuple(r) for r in await db.execute(text("SELECT * FROM credit_grants"))]
        invoices = [
            tuple(r)
            for r in await db.execute(
                text("SELECT id, status, credits, total, amount_paid FROM invoices ORDER BY id")
            )
        ]
    return {
        "credits": await st.api.get("/v1/customers/ana/credits", as_of=now),
        "credits_later": await st.api.get("/v1/customers/ana/credits", as_of=LATER),
        "ledger": await st.api.get("/v1/customers/ana/credits/ledger"),
        "entries": entries,
        "grants": grants,
        "invoices": invoices,
    }


async def invoicing_events(settings: Settings, sessions: Sessions) -> dict[str, str]:
    """{event id: type} of every event on the invoicing topic, once the outbox is sent."""
    await wait_outbox_drained(sessions)
    records, _ = await read_all(settings, topics.EVENTS_INVOICING)
    events = (json.loads(r.value) for r in records)
    return {e["id"]: e["type"] for e in events}


async def test_replaying_the_invoicing_topics_from_the_beginning_changes_no_balance(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer
) -> None:
    s = quick_rejoin(settings, kafka).model_copy(update={"invoicing_tick_s": 0.1})
    async with stack(s, tenant, build_metering(s)) as st:
        await st.api.ok("POST", "/v1/meters", METER)
        async with running(build_invoicing(s)):
            await customer(st, "ana", "USD", tax_rate="0.1")
            await st.api.ok("POST", "/v1/plans", plan("half", "USD", "50.00"))
            await grant(st, "ana", id="promo", amount=3000, effective_at=OCT.isoformat())
            await grant(
                st, "ana", id="early", amount=2000, priority=0, effective_at=OCT.isoformat(),
                expires_at=(NOV + timedelta(days=35)).isoformat(),
            )  # fmt: skip
            # a top-up, granted when a payment event says its invoice was paid
            top_up = await st.api.command(
                "POST", "/v1/customers/ana/credits/top-ups",
                {"id": "t1", "amount": 5000, "purchase_amount": 4500},
            )  # fmt: skip
            assert top_up["status"] == "succeeded", top_up
            top_up_invoice = top_up["result"]["invoice_id"]
            paid = PaymentSucceeded(
                source="tests",
                tenantid=tenant.tenant_id,
                data=PaymentData(
                    payment_id="pay-t1", invoice_id=top_up_invoice, customer="ana",
                    amount=4500, currency="USD", method="offline",
                ),
            )  # fmt: skip
            async with producer(s) as p:
                await p.send_and_wait(
                    topics.EVENTS_PAYMENTS,
                    paid.to_json(),
                    key=topics.partition_key(tenant.tenant_id, "ana").encode(),
                )

            async def topped_up() -> bool:
                body = await st.api.get("/v1/customers/ana/credits", as_of=LATER)
                return bool(body["balance"] == 10_000)

            await wait_for(topped_up, timeout_s=20)

            # invoices of 55.00 and 66.00 (10 % tax): 100.00 of credit pays one in full and
            # the other in part; voiding that one returns what it took
            await st.api.ok("POST", "/v1/plans", plan("more", "USD", "60.00"))
            for sub, key in (("s1", "half"), ("s2", "more")):
                body = {"id": sub, "customer": "ana", "plan": key, "start": OCT.isoformat()}
                await st.api.ok("POST", "/v1/subscriptions", body)
            await st.run_billing(NOV + HOUR)
            invoices = [
                await st.api.get(f"/v1/invoices/{i['invoice_id']}")
                for i in await st.invoices(customer="ana")
                if i["subscription_id"] is not None
            ]
            assert sorted(i["subtotal"] + i["tax"] for i in invoices) == [5500, 6600]
            assert sum(i["credits"] for i in invoices) == 10_000
            [partly] = [i for i in invoices if i["status"] == "finalized"]
            assert 0 < partly["credits"] < partly["subtotal"] + partly["tax"], partly
            r = await st.api.command("POST", f"/v1/invoices/{partly['invoice_id']}/void", {})
            assert r["status"] == "succeeded", r
            now = datetime.now(UTC).isoformat()
            before = await state(st, sessions, now)
            assert before["credits_later"]["balance"] == partly["credits"]
            kinds = sorted({e["kind"] for e in before["ledger"]})
            assert kinds == ["applied", "granted", "reversed", "topped_up"], kinds
            events_before = await invoicing_events(s, sessions)
            credit_events = sorted(t for t in events_before.values() if t.startswith("credit."))
            for kind in ("applied", "reversed"):
                n = sum(1 for e in before["ledger"] if e["kind"] == kind)
                assert credit_events.count(f"credit.{kind}") == n, (kind, credit_events)

        # the worker stopped (a live group is never reset): both its groups from the start
        rereads: dict[str, int] = {}
        for group, topic in READS:
            await no_members(s, group)
            result = await replay(
                s,
                ReplayRequest(
                    topic=topic,
                    group=group,
                    start=parse_bound("earliest", "--from"),
                    reason="test: a replay changes no balance",
                    actor="tests",
                ),
            )
            assert result.records > 0, (group, result)
            rereads[group] = result.records
        assert rereads[groups.INVOICING_PAYMENTS] == 1
        deduped = {group: deduplicated(group, topic) for group, topic in READS}

        async with running(build_invoicing(s)):
            for group, topic in READS:
                await wait_committed_to_end(s, group, topic)

            async def all_recognised() -> bool:
                return all(
                    deduplicated(group, topic) - deduped[group] == rereads[group]
                    for group, topic in READS
                )

            await wait_for(all_recognised, timeout_s=20)
            assert await state(st, sessions, now) == before
            assert await invoicing_events(s, sessions) == events_before

"""Receipts from the real broker and PostgreSQL: every finalized invoice, issued credit note,
succeeded payment and refund gets one signed receipt, chained per customer; a replay of the
topics issues no second receipt; the chain verifies offline against the tenant's keys."""

from __future__ import annotations

import json

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.receipts import GENESIS, Payload, receipt_id
from tests.conftest import TenantKey
from tests.integration.receipts_support import (
    invoice_finalized,
    key_of,
    keys_of,
    payment_refunded,
    payment_succeeded,
    receipts_of,
    topic_of,
    with_secrets,
)
from tests.integration.support import Sessions, producer, running
from workers.devstack import wait_for
from workers.receipts import export_line, jwks, parse_keys, verify_export
from workers.receipts.app import build
from workers.settings import Settings


async def send(settings: Settings, events: list[CloudEvent]) -> None:
    async with producer(settings) as p:
        for e in events:
            await p.send(topic_of(e), e.to_json(), key=key_of(e))
        await p.flush()


async def test_each_document_gets_one_receipt_chained_per_customer_and_verifiable(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(settings)
    events: list[CloudEvent] = [
        invoice_finalized(t, "alice", "in1", 1000),
        payment_succeeded(t, "alice", "pay1", "in1", 1000),
        payment_refunded(t, "alice", "re1", "pay1", "in1", 250),
        invoice_finalized(t, "bob", "in2", 500),
    ]
    await send(settings, events)
    async with running(build(settings)):

        async def issued() -> bool:
            return len(await receipts_of(sessions, t)) == 4

        await wait_for(issued, timeout_s=30)
        await send(settings, events)  # a replay: nothing new
        again = [invoice_finalized(t, "alice", "in3", 70)]
        await send(settings, again)

        async def five() -> bool:
            return len(await receipts_of(sessions, t)) == 5

        await wait_for(five, timeout_s=30)
    alice = await receipts_of(sessions, t, "alice")
    # one chain in the order issued (the invoicing and payments topics interleave freely)
    assert [r.seq for r in alice] == [1, 2, 3, 4]
    assert {(r.kind, r.document_id) for r in alice} == {
        ("invoice", "in1"), ("payment", "pay1"), ("refund", "re1"), ("invoice", "in3")
    }  # fmt: skip
    invoices = [r.document_id for r in alice if r.kind == "invoice"]
    assert invoices == ["in1", "in3"]  # one topic's order is kept
    assert alice[0].prev_hash == GENESIS
    assert [r.prev_hash for r in alice[1:]] == [r.hash for r in alice[:-1]]
    in1 = next(r for r in alice if r.document_id == "in1")
    assert in1.id == receipt_id(t, "invoice", "in1")
    first = Payload.model_validate_json(in1.payload)
    assert first.content["total"] == 1000 and "amount_due" not in first.content
    bob = await receipts_of(sessions, t, "bob")
    assert [(r.seq, r.document_id) for r in bob] == [(1, "in2")]
    keys = parse_keys(json.loads(json.dumps(jwks(await keys_of(sessions, t)))))
    report = verify_export([export_line(r) for r in alice], keys)
    assert report.ok, report.failure
    assert report.receipts == 4
    assert topics.EVENTS_RECEIPTS

"""Receipts from the real broker and PostgreSQL: every finalized invoice, issued credit note,
succeeded payment and refund gets one signed receipt, chained per customer; a replay of the
topics issues no second receipt; the chain verifies offline against the tenant's keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceData
from schemas.receipts import GENESIS, Payload, receipt_id
from storage.receipts import ReceiptRow
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
from tests.integration.support import Sessions, producer, read_all, read_topic, running
from tests.integration.test_invoicing import stack
from tests.integration.test_one_off import USD_LINES, create, customer, invoice, outcome
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.payments import SecretsKeyMissing
from workers.receipts import export_line, jwks, parse_keys, verify_export
from workers.receipts.app import build
from workers.receipts.service import INVOICE_MUTABLE
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


def _strip(value: Any) -> Any:
    """``value`` without null members (absent optional fields are not attested)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


async def _receipt(sessions: Sessions, tenant: str, id: str) -> ReceiptRow:
    async def issued() -> ReceiptRow | None:
        async with sessions() as db:
            return await db.get(ReceiptRow, (tenant, id))

    row: ReceiptRow = await wait_for(issued, timeout_s=30)
    return row


async def test_a_finalized_invoice_and_its_credit_note_name_the_receipts_that_attest_them(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    s = with_secrets(settings.model_copy(update={"invoicing_tick_s": 0.1}))
    async with stack(s, tenant, build_invoicing(s), build(s)) as st:
        await customer(st, "bistro", "USD", tax_rate="0.19")
        accepted = await create(st, {"customer": "bistro", "lines": USD_LINES, "finalize": True})
        await outcome(st, accepted)
        inv = await invoice(st, accepted["invoice_id"])
        # the id is there at once, and is the receipt's id
        assert inv["receipt_id"] == receipt_id(t, "invoice", inv["invoice_id"])
        row = await _receipt(sessions, t, inv["receipt_id"])
        attested = Payload.model_validate_json(row.payload)
        assert (attested.seq, attested.prev_hash, attested.subject.kind) == (1, GENESIS, "invoice")
        # what it attests is the invoice as the API shows it, less what may still change
        immutable = set(InvoiceData.model_fields) - INVOICE_MUTABLE
        assert attested.content == _strip({k: v for k, v in inv.items() if k in immutable})
        assert attested.content["total"] == 85318  # by hand in test_one_off.py (USD)

        r = await st.api.send(
            "POST",
            f"/v1/invoices/{inv['invoice_id']}/credit-notes",
            {"reason": "other", "amount": 1000},
        )
        assert r.status_code == 202, r.text
        note_id = (await st.api.outcome(r.json()["command_id"]))["result"]["credit_note_id"]
        note = await st.api.get(f"/v1/credit-notes/{note_id}")
        assert note["receipt_id"] == receipt_id(t, "credit_note", note_id)
        second = await _receipt(sessions, t, note["receipt_id"])
        assert (second.seq, second.prev_hash) == (2, row.hash)
        assert Payload.model_validate_json(second.payload).content["total"] == note["total"]
    # the invoice.finalized event (and so its webhook payload) carries the receipt's id
    records = (await read_all(s, topics.EVENTS_INVOICING))[0]
    finalized = [json.loads(r.value or b"") for r in records]
    ids = [e["data"].get("receipt_id") for e in finalized if e["type"] == "invoice.finalized"]
    assert ids == [inv["receipt_id"]]


async def test_a_document_that_cannot_be_attested_is_dead_lettered_and_stops_no_one(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(settings)
    # a tenant that does not exist (no key can be made for it) amid a real tenant's documents
    events: list[CloudEvent] = [
        invoice_finalized(t, "alice", "in1", 100),
        invoice_finalized("ghost", "alice", "in1", 100),
        invoice_finalized(t, "alice", "in2", 200),
    ]
    await send(settings, events)
    async with running(build(settings)):

        async def issued() -> bool:
            return len(await receipts_of(sessions, t)) == 2

        await wait_for(issued, timeout_s=30)
        dead = await read_topic(settings, topics.dlq(topics.EVENTS_INVOICING), 1)
    assert json.loads(dead[0].value or b"")["tenantid"] == "ghost"
    assert [r.document_id for r in await receipts_of(sessions, t)] == ["in1", "in2"]


async def test_the_worker_refuses_to_start_without_a_secrets_key(settings: Settings) -> None:
    assert settings.secrets_key is None
    with pytest.raises(SecretsKeyMissing, match="BILLSTREAM_SECRETS_KEY"):
        await build(settings).start()

"""The documents worker under crashes and races, as processes of its own: ``kill -9`` while a
stream of finalized invoices is being rendered, then a restart, leaves every invoice with
exactly one document row and one ``document.rendered`` event whose SHA-256 is the served
PDF's; two replicas handed the same invoices at the same moment (each invoice published on
every partition, so both replicas receive it) store and announce each once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from schemas import groups, topics
from schemas.envelope import CloudEvent
from storage.documents import DocumentBlob, InvoiceDocument
from tests.conftest import TenantKey
from tests.integration.http import Client, ingress
from tests.integration.receipts_support import invoice_finalized, with_secrets
from tests.integration.support import (
    Sessions,
    producer,
    read_all,
    wait_committed_to_end,
    wait_outbox_drained,
    worker_env,
    worker_process,
)
from workers.devstack import wait_for
from workers.ops.kafka import describe_group
from workers.settings import Settings

N = 200  # invoices in the crash test
CUSTOMERS = 20


def invoices(tenant: str, n: int, prefix: str) -> list[CloudEvent]:
    # amounts differ per invoice: every PDF (and so every SHA-256) is its own
    return [
        invoice_finalized(tenant, f"c{i % CUSTOMERS}", f"{prefix}{i:04d}", 1_000 + i)
        for i in range(n)
    ]


async def send(settings: Settings, events: list[CloudEvent], *, every_partition: bool) -> None:
    """Each invoice as invoicing publishes it (keyed by tenant and customer) or, with
    ``every_partition``, once on each partition of the topic (a copy for every replica)."""
    async with producer(settings) as p:
        parts = sorted(await p.partitions_for(topics.EVENTS_INVOICING)) if every_partition else []
        for e in events:
            key = topics.partition_key(e.tenantid, e.data.customer).encode()
            if every_partition:
                for part in parts:
                    await p.send(topics.EVENTS_INVOICING, e.to_json(), key=key, partition=part)
            else:
                await p.send(topics.EVENTS_INVOICING, e.to_json(), key=key)
        await p.flush()


async def rows(sessions: Sessions, tenant: str) -> dict[str, str]:
    """invoice id -> the SHA-256 its document row names."""
    async with sessions() as db:
        found = await db.execute(
            select(InvoiceDocument.invoice_id, InvoiceDocument.sha256).where(
                InvoiceDocument.tenant_id == tenant
            )
        )
        return {i: sha for i, sha in found}


async def row_count(sessions: Sessions, tenant: str) -> int:
    async with sessions() as db:
        q = select(func.count()).where(InvoiceDocument.tenant_id == tenant)
        return int(await db.scalar(q) or 0)


async def announced(settings: Settings) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """``document.rendered`` events per invoice, one per event id (the outbox relay is
    at-least-once on the wire: a crash between publishing and deleting its row publishes the
    same event, same id, again), and how many records the topic holds."""
    records, _ = await read_all(settings, topics.EVENTS_DOCUMENTS, timeout_s=30)
    by_id: dict[str, dict[str, Any]] = {}
    for r in records:
        event = json.loads(r.value or b"")
        assert event["type"] == "document.rendered", event
        if event["id"] in by_id:
            assert by_id[event["id"]] == event  # a republished record is the same event
        by_id[event["id"]] = event
    per_invoice: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in by_id.values():
        per_invoice[event["data"]["invoice_id"]].append(event)
    return per_invoice, len(records)


async def assert_each_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey, expected: list[str]
) -> None:
    """One row, one blob, one event per invoice; the PDF the API serves hashes to the event's
    SHA-256 and is what the event says it is."""
    t = tenant.tenant_id
    stored = await rows(sessions, t)
    assert sorted(stored) == sorted(expected)
    async with sessions() as db:
        blobs = await db.scalar(select(func.count()).where(DocumentBlob.tenant_id == t))
    assert blobs == len(expected)  # every invoice's PDF differs: one blob each, none orphaned
    await wait_outbox_drained(sessions, timeout_s=60)
    per_invoice, _ = await announced(settings)
    assert sorted(per_invoice) == sorted(expected)
    twice = {i: len(es) for i, es in per_invoice.items() if len(es) != 1}
    assert not twice, f"announced more than once: {twice}"
    async with ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        api = Client(http, tenant)
        for invoice_id in expected:
            (event,) = per_invoice[invoice_id]
            r = await http.get(f"/v1/invoices/{invoice_id}/pdf", headers=api.auth)
            assert r.status_code == 200, r.text
            sha = hashlib.sha256(r.content).hexdigest()
            assert sha == event["data"]["sha256"] == stored[invoice_id], invoice_id
            assert len(r.content) == event["data"]["size"]
            assert r.headers["etag"] == f'"{sha}"'
            assert event["data"]["number"] == f"INV-2026-{invoice_id}"


@pytest.mark.slow
async def test_kill_9_while_rendering_stores_and_announces_every_invoice_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    s = with_secrets(settings)
    t = tenant.tenant_id
    events = invoices(t, N, "inv-")
    env = worker_env(s) | {"BILLSTREAM_BATCH_MAX_RECORDS": "4"}  # many transactions
    log = tmp_path / "documents.log"
    with worker_process("documents", env, log, graceful=False) as proc:
        sending = asyncio.create_task(send(s, events, every_partition=False))
        seen: list[int] = []

        async def under_way() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            seen.append(await row_count(sessions, t))
            return N // 5 <= seen[-1] < N  # well into the stream, far from done

        try:
            await wait_for(under_way, timeout_s=120, interval_s=0.01)
        except TimeoutError:
            raise AssertionError(f"{seen[:3]}..{seen[-3:]} {log.read_text()[-3000:]}") from None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        await sending
    stored_at_kill = await row_count(sessions, t)
    out_at_kill, _ = await announced(s)
    print(f"at the kill: {stored_at_kill} rows, {len(out_at_kill)} document.rendered out")
    assert stored_at_kill < N, "the worker finished before it was killed: kill it sooner"
    assert 0 < len(out_at_kill) < N, "kill it when some but not all events are out"

    with worker_process("documents", env, log) as proc:

        async def caught_up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return await row_count(sessions, t) == N

        await wait_for(caught_up, timeout_s=180, interval_s=0.2)
        await wait_committed_to_end(s, groups.DOCUMENTS_INVOICES, topics.EVENTS_INVOICING, 60)
        await wait_outbox_drained(sessions, timeout_s=60)
    await assert_each_once(s, sessions, tenant, [e.data.invoice_id for e in events])
    dead, _ = await read_all(s, topics.dlq(topics.EVENTS_INVOICING))
    assert not dead, [json.loads(r.value or b"") for r in dead][:3]


async def test_two_replicas_handed_the_same_invoices_at_once_store_and_announce_each_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    s = with_secrets(settings)
    t = tenant.tenant_id
    n = 60
    events = invoices(t, n, "dup-")
    env = worker_env(s) | {"BILLSTREAM_BATCH_MAX_RECORDS": "4"}
    with (
        worker_process("documents", env, tmp_path / "a.log") as a,
        worker_process("documents", env, tmp_path / "b.log") as b,
    ):

        async def both_assigned() -> bool:
            for proc, name in ((a, "a"), (b, "b")):
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            # (the embedded broker does not report members' assignments)
            state = await describe_group(s, groups.DOCUMENTS_INVOICES)
            return state.state == "Stable" and state.members == 2

        await wait_for(both_assigned, timeout_s=60, interval_s=0.2)
        # every invoice on every partition: both replicas receive each one, at once
        await send(s, events, every_partition=True)

        async def all_stored() -> bool:
            return await row_count(sessions, t) == n

        await wait_for(all_stored, timeout_s=120, interval_s=0.2)
        await wait_committed_to_end(s, groups.DOCUMENTS_INVOICES, topics.EVENTS_INVOICING, 60)
        await wait_outbox_drained(sessions, timeout_s=60)
        logs = [(tmp_path / f"{x}.log").read_text() for x in ("a", "b")]
    assert all("invoice not rendered" not in text for text in logs)  # no render failed
    await assert_each_once(s, sessions, tenant, [e.data.invoice_id for e in events])
    dead, _ = await read_all(s, topics.dlq(topics.EVENTS_INVOICING))
    assert not dead, [json.loads(r.value or b"") for r in dead][:3]

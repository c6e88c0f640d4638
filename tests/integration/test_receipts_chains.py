"""Receipt chains stay linear under concurrency and crashes: two worker replicas issuing
for the same customers at once (their invoices on one topic, their payments on another)
produce one chain each with no gap or fork; a ``kill -9`` of the worker in the middle of
issuing leaves no gap and no second receipt once a new worker has caught up."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from schemas import groups, topics
from schemas.envelope import CloudEvent
from schemas.receipts import GENESIS, ReceiptIssued, RotateReceiptKey
from storage.receipts import ReceiptRow
from tests.conftest import KafkaServer, TenantKey
from tests.integration.receipts_support import (
    invoice_finalized,
    key_of,
    keys_of,
    payment_succeeded,
    receipts_of,
    topic_of,
    with_secrets,
)
from tests.integration.support import (
    Sessions,
    command_outcome,
    producer,
    quick_rejoin,
    read_all,
    running,
    wait_committed_to_end,
    worker_env,
    worker_process,
)
from tests.integration.test_ops_replay import no_members
from workers.devstack import wait_for
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.receipts import commands as receipt_commands
from workers.receipts import export_line, jwks, parse_keys, verify_export
from workers.receipts.app import build
from workers.settings import Settings


def documents(tenant: str, customers: int, per_customer: int) -> list[CloudEvent]:
    """For each customer, invoices and their payments, interleaved across the two topics."""
    out: list[CloudEvent] = []
    for i in range(per_customer):
        for c in range(customers):
            inv = f"in-{c}-{i}"
            out.append(invoice_finalized(tenant, f"c{c}", inv, 100 + i))
            out.append(payment_succeeded(tenant, f"c{c}", f"pay-{c}-{i}", inv, 100 + i))
    return out


async def send(settings: Settings, events: list[CloudEvent]) -> None:
    async with producer(settings) as p:
        for e in events:
            await p.send(topic_of(e), e.to_json(), key=key_of(e))
        await p.flush()


async def count(sessions: Sessions, tenant: str) -> int:
    async with sessions() as db:
        q = select(func.count()).select_from(ReceiptRow).where(ReceiptRow.tenant_id == tenant)
        return int(await db.scalar(q) or 0)


async def assert_linear(sessions: Sessions, tenant: str, customers: int, each: int) -> None:
    """Every chain is seq 1..each, each naming its predecessor's hash, documents once, and
    the whole export verifies against the tenant's keys."""
    rows = await receipts_of(sessions, tenant)
    keys = parse_keys(jwks(await keys_of(sessions, tenant)))
    for c in range(customers):
        chain = [r for r in rows if r.customer == f"c{c}"]
        assert [r.seq for r in chain] == list(range(1, each + 1)), f"c{c}"
        assert [r.prev_hash for r in chain] == [GENESIS] + [r.hash for r in chain[:-1]]
        assert len({(r.kind, r.document_id) for r in chain}) == each
        report = verify_export([export_line(r) for r in chain], keys)
        assert report.ok, report.failure
    assert len(rows) == customers * each


async def test_two_replicas_issuing_for_the_same_customers_keep_each_chain_linear(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(quick_rejoin(settings, kafka))
    customers, per_customer = 4, 60  # 480 receipts, 120 per chain, from both topics
    async with running(build(settings)), running(build(settings)):
        await send(settings, documents(t, customers, per_customer))

        async def all_issued() -> bool:
            return await count(sessions, t) == customers * per_customer * 2

        await wait_for(all_issued, timeout_s=90, interval_s=0.2)
    await assert_linear(sessions, t, customers, per_customer * 2)


@pytest.mark.slow
async def test_kill_9_while_issuing_leaves_no_gap_and_no_second_receipt(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(settings)
    customers, per_customer = 10, 150  # 3,000 receipts, sent while the worker runs
    total = customers * per_customer * 2
    env = worker_env(settings) | {"BILLSTREAM_BATCH_MAX_RECORDS": "50"}  # many transactions
    log = tmp_path / "receipts.log"
    events = documents(t, customers, per_customer)
    with worker_process("receipts", env, log, graceful=False) as proc:
        sending = asyncio.create_task(send(settings, events))

        async def under_way() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return await count(sessions, t) >= 300

        await wait_for(under_way, timeout_s=60, interval_s=0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        await sending
    killed_at = await count(sessions, t)
    assert killed_at < total, "the worker finished before it was killed: kill it sooner"
    with worker_process("receipts", env, log) as proc:

        async def caught_up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return await count(sessions, t) == total

        await wait_for(caught_up, timeout_s=120, interval_s=0.2)
    await assert_linear(sessions, t, customers, per_customer * 2)
    # every receipt announced (at least once: the outbox relay may repeat one after a crash)
    announced = (await read_all(settings, topics.EVENTS_RECEIPTS))[0]
    ids = {ReceiptIssued.model_validate_json(r.value or b"").data.receipt_id for r in announced}
    assert len(ids) == total


async def test_a_replay_of_the_invoicing_and_payments_topics_issues_no_second_receipt(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(quick_rejoin(settings, kafka))
    await send(settings, documents(t, 3, 5))  # 30 receipts
    async with running(build(settings)):

        async def issued() -> bool:
            return await count(sessions, t) == 30

        await wait_for(issued, timeout_s=30)
    before = [(r.id, r.seq, r.hash) for r in await receipts_of(sessions, t)]
    await no_members(settings, groups.RECEIPTS_DOCUMENTS)
    for topic in (topics.EVENTS_INVOICING, topics.EVENTS_PAYMENTS):
        # the group re-reads both topics from the start, and a copy of each is published
        start = parse_bound("earliest", "--from")
        why = {"reason": "INC-7: replay", "actor": "alice"}
        await replay(settings, ReplayRequest(topic=topic, group=groups.RECEIPTS_DOCUMENTS,
                                             start=start, **why))  # fmt: skip
        await replay(settings, ReplayRequest(topic=topic, into=topic, start=start, **why))
    async with running(build(settings)):
        for topic in (topics.EVENTS_INVOICING, topics.EVENTS_PAYMENTS):
            await wait_committed_to_end(settings, groups.RECEIPTS_DOCUMENTS, topic, 30)
    after = [(r.id, r.seq, r.hash) for r in await receipts_of(sessions, t)]
    assert after == before


async def test_keys_rotated_while_receipts_are_issued_sign_only_within_their_validity(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(quick_rejoin(settings, kafka))
    customers, per_customer = 4, 100  # 800 receipts, in four parts
    events = documents(t, customers, per_customer)
    part = len(events) // 4
    async with running(build(settings)), producer(settings) as p:
        for i in range(4):
            # a part of the documents and, after the first (which creates the first key),
            # a rotation racing it
            await send(settings, events[i * part : (i + 1) * part])
            if i > 0:
                rotate = RotateReceiptKey(source="tests", tenantid=t)
                key = topics.partition_key(t).encode()
                await p.send_and_wait(topics.COMMANDS_RECEIPTS, rotate.to_json(), key=key)

            async def done(i: int = i) -> bool:
                keys, issued = await keys_of(sessions, t), await count(sessions, t)
                return len(keys) == i + 1 and issued == (i + 1) * part

            await wait_for(done, timeout_s=30, interval_s=0.05)
    keys = await keys_of(sessions, t)
    # each key valid from the instant the one before it stopped: no gap, no overlap
    assert [k.not_before for k in keys[1:]] == [k.not_after for k in keys[:-1]]
    assert keys[-1].not_after is None
    used = {r.kid for r in await receipts_of(sessions, t)}
    assert len(used) >= 2, "the rotations all came before or after the receipts"
    await assert_linear(sessions, t, customers, per_customer * 2)  # verify checks validity


async def test_a_rotation_beyond_the_tenants_key_limit_fails_and_changes_nothing(
    settings: Settings,
    sessions: Sessions,
    tenant: TenantKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(settings)
    monkeypatch.setattr(receipt_commands, "MAX_KEYS", 2)
    async with running(build(settings)), producer(settings) as p:
        outcomes = []
        for _ in range(3):
            rotate = RotateReceiptKey(source="tests", tenantid=t)
            await p.send_and_wait(
                topics.COMMANDS_RECEIPTS, rotate.to_json(), key=topics.partition_key(t).encode()
            )
            outcomes.append(await command_outcome(sessions, t, rotate.id))
    assert [o.status for o in outcomes] == ["succeeded", "succeeded", "failed"]
    assert outcomes[2].error is not None and outcomes[2].error["code"] == "too_many_receipt_keys"
    keys = await keys_of(sessions, t)
    assert len(keys) == 2 and keys[-1].not_after is None  # the current key still signs

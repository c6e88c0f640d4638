"""The consumer runtime with handlers of our own, against the real broker and PostgreSQL:
poison isolation by splitting, retries without loss or duplicates, dead-lettered
commands, and a graceful stop that finishes and commits the running batch."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import RecordMetadata
from sqlalchemy import text

from schemas.topics import dlq
from schemas.usage import UsageEvent
from storage.commands import CommandRepository
from tests.conftest import KafkaServer, TenantKey
from tests.integration.support import (
    Sessions,
    committed_offsets,
    headers,
    inbox_count,
    producer,
    quick_rejoin,
    read_topic,
    running,
    topic_size,
    usage,
    wait_committed_to_end,
    wait_inbox,
    wait_outbox_drained,
)
from workers.devstack import wait_for
from workers.runtime import Batch, RetryableError, Runtime, Tx
from workers.runtime.app import Worker, build_worker
from workers.runtime.topics import admin_client, ensure_topics
from workers.settings import Settings

IN = "test.items.v1"
OUT = "test.out.v1"
GROUP = "test.items"

Handler = Callable[[Batch[UsageEvent], Tx], Awaitable[None]]


@pytest.fixture
async def topics(settings: Settings, kafka: KafkaServer) -> None:
    """This module's topics, empty (a shared broker keeps them between tests: recreate)."""
    if not kafka.embedded:
        client = await admin_client(settings.kafka_bootstrap)
        try:
            stale = [t for t in (IN, dlq(IN), OUT) if t in await client.list_topics()]
            if stale:
                await client.delete_topics(stale)
        finally:
            await client.close()
    await ensure_topics(
        settings.kafka_bootstrap, partitions=3, replication=1, names=[IN, dlq(IN), OUT]
    )


def worker_with(settings: Settings, handler: Handler, *, commands: bool = False) -> Worker:
    def register(runtime: Runtime) -> None:
        runtime.consumer(IN, group=GROUP, decode=UsageEvent.from_json, commands=commands)(handler)

    return build_worker("test", settings, register)


def items(n: int, *, subjects: int = 1, tenant: str = "acme") -> list[UsageEvent]:
    return [
        usage(tenant, f"m-{i}", type="item", subject=f"s-{i % subjects}", data={"i": i})
        for i in range(n)
    ]


async def send(settings: Settings, events: Sequence[UsageEvent]) -> None:
    async with producer(settings) as p:
        await send_usage_to(p, events)


async def send_usage_to(p: AIOKafkaProducer, events: Sequence[UsageEvent]) -> list[RecordMetadata]:
    futures = [
        await p.send(IN, e.to_json(), key=f"{e.tenantid}:{e.subject}".encode()) for e in events
    ]
    return [await f for f in futures]


def ids(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[str]:
    return [json.loads(r.value)["id"] for r in records]


async def test_a_poison_message_is_split_out_to_the_dlq_and_every_other_message_is_applied(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
    poison = "m-17"
    calls: list[list[str]] = []

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        calls.append([m.event.id for m in batch])
        for m in await tx.claim(batch):
            tx.emit(m.event, topic=OUT, key=m.event.id)  # an effect, published on commit
            if m.event.id == poison:
                raise ValueError(f"cannot handle {m.event.id}")

    events = items(40)  # one subject: one partition, so they arrive as one batch
    async with producer(settings) as p:
        sent = await send_usage_to(p, events)
    async with running(worker_with(settings, handler)):
        [dead] = await read_topic(settings, dlq(IN), 1)
        await wait_committed_to_end(settings, GROUP, IN)
        await wait_outbox_drained(sessions)

    # every other message's effect is committed and published exactly once
    out = await read_topic(settings, OUT, 39)
    assert sorted(ids(out)) == sorted(e.id for e in events if e.id != poison)
    assert await inbox_count(sessions, GROUP) == 39  # the poison's claim was rolled back

    h = headers(dead)
    assert json.loads(dead.value)["id"] == poison
    assert h["billstream-dlq-error"] == "ValueError"
    assert h["billstream-dlq-reason"] == f"ValueError: cannot handle {poison}"
    assert (h["billstream-dlq-topic"], h["billstream-dlq-group"]) == (IN, GROUP)
    poison_sent = sent[17]
    assert h["billstream-dlq-partition"] == str(poison_sent.partition)
    assert h["billstream-dlq-offset"] == str(poison_sent.offset)

    # it was found by splitting: batches holding it shrank until it stood alone
    with_poison = [c for c in calls if poison in c]
    assert max(map(len, with_poison)) > 1 and [poison] in with_poison
    assert len(with_poison) <= 8  # bisection, not one retry per message


async def test_a_retryable_error_is_retried_until_it_passes_with_no_loss_and_no_duplicates(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
    flaky, failures = "m-5", 6  # more than bisecting a batch of 20 would take to isolate it
    attempts: Counter[str] = Counter()
    with_flaky: list[list[str]] = []

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        if any(m.event.id == flaky for m in batch):
            with_flaky.append([m.event.id for m in batch])
        for m in await tx.claim(batch):
            attempts[m.event.id] += 1
            tx.emit(m.event, topic=OUT, key=m.event.id)
            if m.event.id == flaky and attempts[flaky] <= failures:
                raise RetryableError("the ledger is busy")

    events = items(20, subjects=4)
    await send(settings, events)
    quick_backoff = settings.model_copy(update={"retry_max_s": 0.2})
    async with running(worker_with(quick_backoff, handler)):
        await wait_inbox(sessions, GROUP, 20)
        await wait_committed_to_end(settings, GROUP, IN)
        await wait_outbox_drained(sessions)
    assert attempts[flaky] == failures + 1
    assert all(b == with_flaky[0] for b in with_flaky)  # the same batch retried, never split
    out = await read_topic(settings, OUT, 20)
    assert sorted(ids(out)) == sorted(e.id for e in events)  # each exactly once
    assert await topic_size(settings, dlq(IN)) == 0


async def test_a_database_connection_lost_mid_batch_is_retried_and_the_batch_applies_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
    outage = 6  # attempts that lose their connection: more than bisecting the batch takes
    batches: list[list[str]] = []

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        batches.append([m.event.id for m in batch])
        for m in await tx.claim(batch):
            tx.emit(m.event, topic=OUT, key=m.event.id)
        if len(batches) <= outage:  # the server drops this connection mid-transaction
            await tx.session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    events = items(12)  # one partition: one batch
    await send(settings, events)
    quick_backoff = settings.model_copy(update={"retry_max_s": 0.2})
    async with running(worker_with(quick_backoff, handler)):
        await wait_inbox(sessions, GROUP, 12)
        await wait_committed_to_end(settings, GROUP, IN)
        await wait_outbox_drained(sessions)
    assert len(batches) > outage
    assert all(b == batches[0] for b in batches[: outage + 1])  # retried whole, not split
    out = await read_topic(settings, OUT, 12)
    assert sorted(ids(out)) == sorted(e.id for e in events)  # none lost, none twice
    assert await topic_size(settings, dlq(IN)) == 0  # an outage is not a poison message


async def test_a_dead_lettered_command_is_marked_failed(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        for m in await tx.claim(batch):
            async with tx.command(m) as result:
                if m.event.data["i"] == 1:
                    raise KeyError("bug")  # not a domain error: the runtime dead-letters it
                result["ok"] = True

    commands = items(3)
    await send(settings, commands)
    async with running(worker_with(settings, handler, commands=True)):
        await read_topic(settings, dlq(IN), 1)
        await wait_committed_to_end(settings, GROUP, IN)
    async with sessions() as session:
        repo = CommandRepository(session)
        outcomes = [await repo.get("acme", c.id) for c in commands]
    assert [(o.status if o else None) for o in outcomes] == ["succeeded", "failed", "succeeded"]
    assert outcomes[0].result == {"ok": True}  # type: ignore[union-attr]
    assert outcomes[1].error == {  # type: ignore[union-attr]
        "code": "dead_lettered",
        "message": "KeyError: 'bug'",
    }


async def test_a_graceful_stop_finishes_and_commits_the_batch_in_progress(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None, kafka: KafkaServer
) -> None:
    settings = quick_rejoin(settings, kafka)
    entered, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        fresh = await tx.claim(batch)
        entered.set()
        await release.wait()  # the batch is in progress when the stop begins
        handled.extend(m.event.id for m in fresh)

    events = items(10, subjects=3)
    await send(settings, events)
    worker = worker_with(settings, handler)
    await worker.start()
    try:
        await asyncio.wait_for(entered.wait(), timeout=15)
    finally:
        stopping = asyncio.create_task(worker.stop())
        # release the batch only once the stop is under way (it could wrongly abandon it)
        await wait_for(lambda: worker.runtime.processors[0].stopping.is_set())
        release.set()
        await asyncio.wait_for(stopping, timeout=15)

    # what the handler applied is in the database and its offsets are committed
    assert handled
    assert await inbox_count(sessions, GROUP) == len(handled)
    committed = await committed_offsets(settings, GROUP, IN)
    assert sum(c or 0 for c in committed.values()) == len(handled)

    # a restart applies the rest, nothing twice
    first = list(handled)
    handled.clear()
    async with running(worker_with(settings, handler)):
        await wait_committed_to_end(settings, GROUP, IN)
    assert sorted(first + handled) == sorted(e.id for e in events)
    assert await inbox_count(sessions, GROUP) == 10


async def test_the_next_batch_is_decoded_while_one_applies_and_nothing_commits_early(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
    """ADR 0042: while one batch's transaction runs, the next is fetched and decoded; its
    offsets (and the running batch's) are committed only after each batch applied."""
    decoded: list[str] = []
    entered, release = asyncio.Event(), asyncio.Event()
    handled: Counter[str] = Counter()

    def decode(raw: bytes) -> UsageEvent:
        event = UsageEvent.from_json(raw)
        decoded.append(event.id)
        return event

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        fresh = await tx.claim(batch)
        entered.set()
        await release.wait()  # the first batch holds its transaction open
        handled.update(m.event.id for m in fresh)

    def register(runtime: Runtime) -> None:
        runtime.consumer(IN, group=GROUP, decode=decode)(handler)

    first, later = items(10, subjects=3), items(20, subjects=3)[10:]
    await send(settings, first)
    async with running(build_worker("test", settings, register)):
        await asyncio.wait_for(entered.wait(), timeout=15)
        await send(settings, later)
        await wait_for(lambda: {e.id for e in later} <= set(decoded))
        # decoded, but neither batch applied nor committed while the first one runs
        assert not handled
        assert await inbox_count(sessions, GROUP) == 0
        assert all(not c for c in (await committed_offsets(settings, GROUP, IN)).values())
        release.set()
        await wait_committed_to_end(settings, GROUP, IN)
    assert handled == Counter(e.id for e in first + later)  # all of them, once
    assert await inbox_count(sessions, GROUP) == 20


async def test_a_member_joining_mid_stream_takes_partitions_and_every_message_applies_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None, kafka: KafkaServer
) -> None:
    """A rebalance while batches are in flight (one applying, the next decoded): partitions
    move to the new member, a batch whose partition moved is read again from the committed
    offset and dropped by the inbox, and every message takes effect exactly once."""
    settings = quick_rejoin(settings, kafka).model_copy(update={"batch_max_records": 50})
    applied_by: Counter[str] = Counter()

    def member(name: str) -> Worker:
        async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
            for m in await tx.claim(batch):
                tx.emit(m.event, topic=OUT, key=m.event.id)
            await asyncio.sleep(0.02)  # a consumer slow enough for the join to land mid-stream
            applied_by[name] += 1

        return worker_with(settings, handler)

    events = items(4_000, subjects=40)
    await send(settings, events)
    async with running(member("first")):
        await wait_for(lambda: applied_by["first"] >= 5)
        async with running(member("second")):
            await wait_committed_to_end(settings, GROUP, IN, timeout_s=60)
        await wait_outbox_drained(sessions)
    assert applied_by["second"] > 0  # the partitions did move
    assert await inbox_count(sessions, GROUP) == len(events)
    out = await read_topic(settings, OUT, len(events))
    assert sorted(ids(out)) == sorted(e.id for e in events)  # each exactly once


async def test_a_consumer_of_a_dead_letter_topic_never_dead_letters(
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
    """A record a dead-letter consumer cannot decode or apply stays in its dead-letter
    topic: no ``.dlq.dlq`` outbox row (there is no such topic; the row would block the relay
    forever), and the consumer moves on."""
    group = "test.dead-letters"
    seen: list[str] = []

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        for m in batch:
            if m.event.id == "m-1":
                raise ValueError("cannot handle it")
        seen.extend(m.event.id for m in batch)

    def register(runtime: Runtime) -> None:
        runtime.consumer([dlq(IN)], group=group, decode=UsageEvent.from_json)(handler)

    async with producer(settings) as p:
        await p.send_and_wait(dlq(IN), b"not json", key=b"k")
        for e in items(3):
            await p.send_and_wait(dlq(IN), e.to_json(), key=b"k")
    async with running(build_worker("test", settings, register)):
        await wait_committed_to_end(settings, group, dlq(IN))
        await wait_outbox_drained(sessions)
    assert sorted(seen) == ["m-0", "m-2"]
    assert await topic_size(settings, dlq(IN)) == 4  # all still there, nothing added
    client = await admin_client(settings.kafka_bootstrap)
    try:
        names = await client.list_topics()
    finally:
        await client.close()
    assert dlq(dlq(IN)) not in names or await topic_size(settings, dlq(dlq(IN))) == 0


async def test_a_job_stuck_in_a_tick_cannot_hang_the_stop_and_is_cancelled_and_closed(
    settings: Settings, topics: None
) -> None:
    """Each phase of a stop is bounded by graceful_timeout_s: a tick that never returns
    (a hung call to a third party, say) is cancelled, its ``close`` still runs, and the
    worker stops and leaves its groups."""
    seen: list[str] = []
    stuck = asyncio.Event()

    async def tick() -> bool:
        seen.append("tick")
        await stuck.wait()  # never set
        return False

    async def close() -> None:
        seen.append("closed")

    def register(runtime: Runtime) -> None:
        async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
            await tx.claim(batch)

        runtime.consumer(IN, group=GROUP, decode=UsageEvent.from_json)(handler)
        runtime.job("test.stuck", tick, every_s=3600, close=close)

    worker = build_worker("test", settings.model_copy(update={"graceful_timeout_s": 0.5}), register)
    await worker.start()
    await wait_for(lambda: seen == ["tick"], timeout_s=10)
    await asyncio.wait_for(worker.stop(), timeout=30)
    assert seen == ["tick", "closed"]
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name() == "test.stuck")

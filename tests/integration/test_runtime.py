"""The consumer runtime with handlers of our own, against the real broker and PostgreSQL:
poison isolation by splitting, retries without loss or duplicates, dead-lettered
commands, and a graceful stop that finishes and commits the running batch."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import pytest

from schemas.topics import dlq
from schemas.usage import UsageEvent
from storage.commands import CommandRepository
from tests.conftest import TenantKey
from tests.integration.support import (
    Sessions,
    committed_offsets,
    headers,
    inbox_count,
    plain_tracebacks,
    producer,
    read_topic,
    running,
    topic_size,
    usage,
    wait_committed_to_end,
    wait_inbox,
    wait_outbox_drained,
)
from workers.runtime import Batch, RetryableError, Runtime, Tx
from workers.runtime.app import Worker, build_worker
from workers.runtime.topics import ensure_topics
from workers.settings import Settings


@pytest.fixture(autouse=True)
def _fast_logs() -> None:
    plain_tracebacks()


IN = "test.items.v1"
OUT = "test.out.v1"
GROUP = "test.items"

Handler = Callable[[Batch[UsageEvent], Tx], Awaitable[None]]


@pytest.fixture
async def topics(settings: Settings) -> None:
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


async def send_usage_to(p, events: Sequence[UsageEvent]):  # type: ignore[no-untyped-def]
    futures = [
        await p.send(IN, e.to_json(), key=f"{e.tenantid}:{e.subject}".encode()) for e in events
    ]
    return [await f for f in futures]


def ids(records) -> list[str]:  # type: ignore[no-untyped-def]
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
    flaky, failures = "m-5", 3
    attempts: Counter[str] = Counter()

    async def handler(batch: Batch[UsageEvent], tx: Tx) -> None:
        for m in await tx.claim(batch):
            attempts[m.event.id] += 1
            tx.emit(m.event, topic=OUT, key=m.event.id)
            if m.event.id == flaky and attempts[flaky] <= failures:
                raise RetryableError("the ledger is busy")

    events = items(20, subjects=4)
    await send(settings, events)
    async with running(worker_with(settings, handler)):
        await wait_inbox(sessions, GROUP, 20)
        await wait_committed_to_end(settings, GROUP, IN)
        await wait_outbox_drained(sessions)
    assert attempts[flaky] == failures + 1
    out = await read_topic(settings, OUT, 20)
    assert sorted(ids(out)) == sorted(e.id for e in events)  # each exactly once
    assert await topic_size(settings, dlq(IN)) == 0


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
    settings: Settings, sessions: Sessions, tenant: TenantKey, topics: None
) -> None:
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
        await asyncio.sleep(0.1)  # give stop() the chance to (wrongly) abandon the batch
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

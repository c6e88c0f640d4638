"""Helpers for integration tests against the real broker and PostgreSQL.

Producing records, reading topics and committed offsets, running workers, polling
command outcomes and usage queries. Everything waits with a deadline (never a sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas import topics
from schemas.envelope import new_id
from schemas.metering import CreateMeter, MeterSpec
from schemas.usage import UsageEvent
from storage.commands import CommandRecord, CommandRepository
from storage.inbox import InboxEntry, message_key
from storage.metering import MeterDef, MeterRepository, UsageRepository, UsageRow, WindowSize
from storage.outbox import OutboxRow
from workers.devstack import wait_for
from workers.runtime.app import Worker
from workers.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import KafkaServer

Sessions = async_sessionmaker[AsyncSession]

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)  # an hour boundary; tests place events after it


# --- producing ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=5,
    )
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def usage(
    tenant: str,
    id: str,
    *,
    type: str = "api.call",
    subject: str = "cust-1",
    time: datetime = T0,
    data: dict[str, Any] | None = None,
    source: str = "tests",
) -> UsageEvent:
    return UsageEvent(
        id=id,
        source=source,
        type=type,
        subject=subject,
        time=time,
        data=data or {},
        tenantid=tenant,
    )


async def send_usage(p: AIOKafkaProducer, events: Iterable[UsageEvent]) -> int:
    """Send ``events`` to the usage topic (keyed tenant:subject) and wait for every ack."""
    futures = [
        await p.send(topics.USAGE, e.to_json(), key=f"{e.tenantid}:{e.subject}".encode())
        for e in events
    ]
    for f in futures:
        await f
    return len(futures)


async def send_raw(
    p: AIOKafkaProducer,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> RecordMetadata:
    return await (await p.send(topic, value, key=key, headers=list(headers or ())))


def create_meter_command(tenant: str, **spec: Any) -> CreateMeter:
    return CreateMeter(source="tests", tenantid=tenant, data=MeterSpec(**spec))


async def send_command(p: AIOKafkaProducer, command: CreateMeter) -> str:
    await send_raw(p, topics.COMMANDS_METERING, command.to_json(), command.tenantid.encode())
    return command.id


# --- reading results ------------------------------------------------------------------


async def command_outcome(
    sessions: Sessions, tenant: str, command_id: str, timeout_s: float = 15.0
) -> CommandRecord:
    """The command's final record (waits until a worker has recorded it)."""

    async def done() -> CommandRecord | None:
        async with sessions() as session:
            record = await CommandRepository(session).get(tenant, command_id)
            return record if record is not None and record.status != "pending" else None

    result: CommandRecord = await wait_for(done, timeout_s=timeout_s)
    return result


async def insert_meters(
    sessions: Sessions, tenant: str, specs: Sequence[dict[str, Any]]
) -> dict[str, MeterDef]:
    """Define meters straight in the database (the arrangement of a test that is not about
    meter commands, so events can be on the topic before any worker runs)."""
    out: dict[str, MeterDef] = {}
    async with sessions() as session, session.begin():
        for spec in specs:
            s = MeterSpec(**spec)
            m = MeterDef(
                id=new_id(),
                tenant_id=tenant,
                key=s.key,
                event_type=s.event_type,
                aggregation=s.aggregation.value,
                value_property=s.value_property,
                group_by=dict(s.group_by),
            )
            assert await MeterRepository(session).add(m) is None
            out[s.key] = m
    return out


async def meter(sessions: Sessions, tenant: str, key: str) -> MeterDef | None:
    async with sessions() as session:
        return await MeterRepository(session).get(tenant, key)


async def create_meters(
    p: AIOKafkaProducer, sessions: Sessions, tenant: str, specs: Sequence[dict[str, Any]]
) -> dict[str, MeterDef]:
    """Create meters through the command topic (a running worker needed); wait for each."""
    ids = [await send_command(p, create_meter_command(tenant, **spec)) for spec in specs]
    out: dict[str, MeterDef] = {}
    for spec, command_id in zip(specs, ids, strict=True):
        record = await command_outcome(sessions, tenant, command_id)
        assert record.status == "succeeded", record.error
        m = await meter(sessions, tenant, spec["key"])
        assert m is not None
        out[spec["key"]] = m
    return out


async def query(
    sessions: Sessions,
    m: MeterDef,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    subjects: Sequence[str] = (),
    window: WindowSize = "none",
    group_by: Sequence[str] = (),
) -> list[UsageRow]:
    async with sessions() as session:
        return await UsageRepository(session).query(
            m, start=start, end=end, subjects=list(subjects), window=window, group_by=list(group_by)
        )


async def total(sessions: Sessions, m: MeterDef, **kw: Any) -> Decimal | None:
    """The meter's single value over everything (or the filtered range)."""
    rows = await query(sessions, m, **kw)
    assert len(rows) <= 1, rows
    return rows[0].value if rows else None


async def inbox_count(sessions: Sessions, consumer: str) -> int:
    async with sessions() as session:
        n = await session.scalar(
            select(func.count()).select_from(InboxEntry).where(InboxEntry.consumer == consumer)
        )
        return int(n or 0)


@contextlib.asynccontextmanager
async def inbox_gate(
    sessions: Sessions, consumer: str, tenant: str, source: str, message_id: str
) -> AsyncIterator[None]:
    """Hold, uncommitted, the inbox row of one message: the worker's batch claiming it blocks
    on the row lock (a real PostgreSQL wait, observable) until the block exits (rollback)."""
    async with sessions() as session, session.begin():
        await session.execute(
            text("INSERT INTO inbox (consumer, message_key) VALUES (:c, :k)"),
            {"c": consumer, "k": message_key(tenant, source, message_id)},
        )
        yield
        await session.rollback()


async def waiting_on_lock(sessions: Sessions) -> bool:
    async with sessions() as session:
        n = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return bool(n)


async def outbox_backlog(sessions: Sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxRow)) or 0)


async def wait_inbox(sessions: Sessions, consumer: str, n: int, timeout_s: float = 20.0) -> None:
    """Wait until ``consumer`` has applied (inbox-claimed) exactly ``n`` distinct messages."""

    async def reached() -> bool:
        return await inbox_count(sessions, consumer) >= n

    await wait_for(reached, timeout_s=timeout_s)
    assert await inbox_count(sessions, consumer) == n


# --- Kafka offsets and topics --------------------------------------------------------


@contextlib.asynccontextmanager
async def _consumer(settings: Settings, **config: Any) -> AsyncIterator[AIOKafkaConsumer]:
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, fetch_max_wait_ms=50, **config)
    await c.start()
    try:
        yield c
    finally:
        # aiokafka: stopping a group-less consumer whose background task has not run yet
        # raises CancelledError out of stop(); one turn of the loop lets the task start
        await asyncio.sleep(0)
        await c.stop()


async def _partitions(c: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await c.topics()  # refreshes the metadata
    parts = c.partitions_for_topic(topic)
    assert parts, f"no topic {topic}"
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def read_all(
    settings: Settings, topic: str, timeout_s: float = 15.0
) -> tuple[list[ConsumerRecord[bytes, bytes]], dict[int, int]]:
    """Every record on ``topic`` now, and each partition's end offset.

    The end offsets are the high watermarks of fetch responses: Tansu 0.6 answers
    ListOffsets(latest), so ``end_offsets()``/``seek_to_end()``, with the base offset of
    the last record batch + 1 rather than the high watermark."""
    async with _consumer(settings, enable_auto_commit=False) as c:
        tps = await _partitions(c, topic)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []

        async def at_end() -> bool:
            batch = await c.getmany(timeout_ms=50, max_records=10_000)
            for rs in batch.values():
                records.extend(rs)
            for tp in tps:
                hw = c.highwater(tp)
                if hw is None or await c.position(tp) < hw:
                    return False
            return True

        await wait_for(at_end, timeout_s=timeout_s, interval_s=0)
        return records, {tp.partition: await c.position(tp) for tp in tps}


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    return (await read_all(settings, topic))[1]


async def topic_size(settings: Settings, topic: str) -> int:
    """How many records ``topic`` holds."""
    return sum((await end_offsets(settings, topic)).values())


async def read_topic(
    settings: Settings, topic: str, count: int, timeout_s: float = 15.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Wait until ``topic`` holds ``count`` records; return them (in partition order).

    Exactly ``count``: a record more is a failure too."""
    records: list[ConsumerRecord[bytes, bytes]] = []

    async def enough() -> bool:
        nonlocal records
        records = (await read_all(settings, topic))[0]
        return len(records) >= count

    try:
        await wait_for(enough, timeout_s=timeout_s, interval_s=0.1)
    except TimeoutError:
        raise AssertionError(f"{topic} holds {len(records)} records, expected {count}") from None
    assert len(records) == count, f"{topic} holds {len(records)} records, expected {count}"
    return records


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offsets (through a consumer of that group: Tansu's admin API
    cannot list them). The consumer never subscribes, so it never joins the group."""
    async with _consumer(settings, group_id=group, enable_auto_commit=False) as c:
        return {tp.partition: await c.committed(tp) for tp in await _partitions(c, topic)}


async def wait_committed_to_end(
    settings: Settings, group: str, topic: str, timeout_s: float = 20.0
) -> dict[int, int]:
    """Wait until ``group`` has committed every partition of ``topic`` up to its end."""
    ends = await end_offsets(settings, topic)

    async def caught_up() -> bool:
        committed = await committed_offsets(settings, group, topic)
        return all((committed[p] or 0) == end for p, end in ends.items())

    try:
        await wait_for(caught_up, timeout_s=timeout_s, interval_s=0.1)
    except TimeoutError:
        committed = await committed_offsets(settings, group, topic)
        raise AssertionError(f"{group} committed {committed}, end offsets {ends}") from None
    return ends


async def wait_outbox_drained(sessions: Sessions, timeout_s: float = 15.0) -> None:
    """Wait until the relay has published every committed outbox row."""

    async def empty() -> bool:
        return await outbox_backlog(sessions) == 0

    await wait_for(empty, timeout_s=timeout_s)


def headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


# --- workers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def quick_rejoin(settings: Settings, kafka: KafkaServer) -> Settings:
    """Settings for a test that restarts a worker in-process.

    The embedded broker (Tansu 0.6) seats a group's next member only after up to twice the
    session timeout (4 s with the fixture's 2 s); with 1 s it takes ~1 s. Real Kafka refuses
    session timeouts under group.min.session.timeout.ms (6 s), so it keeps the fixture's."""
    if not kafka.embedded:
        return settings
    return settings.model_copy(update={"kafka_session_timeout_ms": 1_000})


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for ``python -m workers.cli worker …`` matching the test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
    env.update(
        {
            "BILLSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "BILLSTREAM_DATABASE_URL": settings.database_url,
            "BILLSTREAM_KAFKA_IDEMPOTENCE": str(settings.kafka_idempotence).lower(),
            "BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
            "BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": str(settings.kafka_heartbeat_interval_ms),
            "BILLSTREAM_BATCH_TIMEOUT_MS": str(settings.batch_timeout_ms),
            "BILLSTREAM_BATCH_MAX_RECORDS": str(settings.batch_max_records),
            "BILLSTREAM_RETRY_INITIAL_S": str(settings.retry_initial_s),
            "BILLSTREAM_RETRY_MAX_S": str(settings.retry_max_s),
            "BILLSTREAM_OUTBOX_POLL_INTERVAL_S": str(settings.outbox_poll_interval_s),
            "BILLSTREAM_DATABASE_POOL_SIZE": str(settings.database_pool_size),
            "BILLSTREAM_LOG_FORMAT": "json",
        }
    )
    if settings.secrets_key is not None:
        env["BILLSTREAM_SECRETS_KEY"] = settings.secrets_key.get_secret_value()
    return env


# --- bulk ------------------------------------------------------------------------------

_BULK = (
    '{{"specversion":"1.0","id":"{id}","source":"bulk","type":"{type}","time":"{time}",'
    '"subject":"{subject}","datacontenttype":"application/json","tenantid":"{tenant}",'
    '"dataversion":"1","data":{{"amount":{amount},"user":"{user}"}}}}'
)


def bulk_record(
    tenant: str,
    id: str,
    subject: str,
    time: datetime,
    amount: int | str,
    user: str = "u",
    type: str = "api.call",
) -> tuple[bytes, bytes]:
    """(key, value) of a usage event, written directly (fast, for tens of thousands)."""
    value = _BULK.format(
        id=id,
        type=type,
        time=time.isoformat(),
        subject=subject,
        tenant=tenant,
        amount=amount,
        user=user,
    )
    return f"{tenant}:{subject}".encode(), value.encode()


async def send_records(
    p: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes, bytes]]
) -> None:
    """Send (key, value) pairs and wait for every acknowledgement."""
    futures = [await p.send(topic, value, key=key) for key, value in records]
    await asyncio.gather(*futures)


@contextlib.contextmanager
def worker_process(
    name: str, env: dict[str, str], log: Path, *, graceful: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """``billstream worker <name>`` as a process of its own (``env``: ``worker_env`` and
    more), its output in ``log``. On the way out, one still running is stopped: SIGTERM
    (killed if it takes over 15 s), or at once with ``graceful=False``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", name],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
            proc.wait()

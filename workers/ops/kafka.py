"""The Kafka I/O the operations commands share: partitions and their true bounds, time and
offset resolution, reading an offset range, committed offsets, and moving a consumer
group's offsets only when no live member holds the group.

Two brokers are supported with the same code: Apache Kafka and the embedded Tansu 0.6
(docs/adr/0021-ops-on-kafka-and-the-embedded-broker.md). Tansu's ListOffsets(latest) answers
the base offset of the last record *batch* + 1, so end offsets are always corrected with
the high watermark of a fetch; its ListOffsets(timestamp) indexes broker append time, so a
time is always resolved by reading forward from the offset the broker suggests; it keeps
members listed in DescribeGroups after they leave, so a group that lists members is only
reset after joining it and finding nobody else there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from workers.devstack import wait_for
from workers.ops.errors import OpsError
from workers.runtime.offsets import OffsetsUnavailable, true_ends
from workers.runtime.publisher import RecordPublisher
from workers.runtime.topics import admin_client
from workers.settings import Settings

Record: TypeAlias = ConsumerRecord[bytes, bytes]

_FETCH_WAIT_MS = 50


# --- clients -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def consumer(
    settings: Settings, *, group_id: str | None = None, **config: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer that never auto-commits. With ``group_id`` and no subscription it
    reads the group's committed offsets without joining the group."""
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=_FETCH_WAIT_MS,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 40_000),
        **config,
    )
    try:
        await c.start()
    except KafkaConnectionError as e:
        await c.stop()
        raise OpsError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({e})",
            option="BILLSTREAM_KAFKA_BOOTSTRAP",
        ) from None
    try:
        yield c
    finally:
        # a group-less consumer stopped before its background task ran raises CancelledError
        await asyncio.sleep(0)
        await c.stop()


@contextlib.asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[RecordPublisher]:
    """The runtime's producer (``acks=all``; idempotent where the broker supports it:
    ``kafka_idempotence``), connected."""
    p = RecordPublisher(settings, client_id="billstream-cli")
    try:
        await p.connect()
    except KafkaConnectionError as e:
        raise OpsError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({e})",
            option="BILLSTREAM_KAFKA_BOOTSTRAP",
        ) from None
    try:
        yield p
    finally:
        await p.stop()


async def topic_partitions(
    c: AIOKafkaConsumer, topic: str, only: int | None = None, *, option: str = "--topic"
) -> list[TopicPartition]:
    if topic not in await c.topics():
        raise OpsError(f"topic {topic!r} does not exist", option=option)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or set())]
    if only is not None:
        if only not in {tp.partition for tp in tps}:
            raise OpsError(
                f"topic {topic!r} has partitions 0-{len(tps) - 1}, not {only}",
                option="--partition",
            )
        tps = [tp for tp in tps if tp.partition == only]
    return tps


# --- bounds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    beginning: int  # first offset still in the log
    end: int  # the high watermark: offset of the next record produced

    @property
    def size(self) -> int:
        return self.end - self.beginning


async def log_bounds(
    c: AIOKafkaConsumer, tps: Sequence[TopicPartition], timeout_s: float = 30.0
) -> dict[TopicPartition, Bounds]:
    """Each partition's first offset and its true end (high watermark).

    ``end_offsets()`` is a lower bound on Tansu (the last batch's base offset + 1), exact on
    Kafka: ``workers.runtime.offsets.true_ends`` corrects it. Uses (and re-assigns) ``c``."""
    if not tps:
        return {}
    beginning = await c.beginning_offsets(list(tps))
    try:
        ends = await true_ends(c, list(tps), floor=beginning, timeout_s=timeout_s)
    except OffsetsUnavailable:
        raise OpsError("Kafka did not answer fetches for the high watermarks") from None
    return {tp: Bounds(beginning[tp], ends[tp]) for tp in tps}


# --- resolving --from / --to -----------------------------------------------------------------


async def offset_for_time(
    c: AIOKafkaConsumer, tp: TopicPartition, at: datetime, bounds: Bounds
) -> int:
    """The first offset whose record timestamp is at or after ``at`` (``bounds.end`` when
    none is), as Kafka's ListOffsets(timestamp) defines it for record timestamps.

    The broker's answer is used as a starting point only (exact on Kafka; on Tansu an
    earlier offset, as it indexes append time), then records are read forward from it."""
    ms = int(at.timestamp() * 1000)
    found = await c.offsets_for_times({tp: ms})
    hint = found.get(tp)
    if hint is None:
        return bounds.end
    start = min(max(hint.offset, bounds.beginning), bounds.end)
    async for batch in read_range(c, {tp: (start, bounds.end)}):
        for record in batch:
            if record.timestamp >= ms:
                return int(record.offset)
    return bounds.end


# --- reading -----------------------------------------------------------------------------


async def read_range(
    c: AIOKafkaConsumer,
    ranges: dict[TopicPartition, tuple[int, int]],
    *,
    idle_timeout_s: float = 30.0,
) -> AsyncIterator[list[Record]]:
    """The records of ``[start, end)`` of each partition, in offset order per partition,
    as batches. Re-assigns ``c``. Raises ``OpsError`` when nothing arrives for
    ``idle_timeout_s`` while records are still expected."""
    todo = {tp: r for tp, r in ranges.items() if r[1] > r[0]}
    if not todo:
        return
    c.assign(list(todo))
    for tp, (start, _) in todo.items():
        c.seek(tp, start)
    last_progress = time.monotonic()
    while todo:
        fetched = await c.getmany(*todo, timeout_ms=200, max_records=2_000)
        out: list[Record] = []
        for tp, records in fetched.items():
            if tp not in todo:
                continue
            end = todo[tp][1]
            out.extend(r for r in records if r.offset < end)
        for tp in list(todo):
            # past the end: read everything, or the log has a gap (compaction) up to it
            if await c.position(tp) >= todo[tp][1]:
                del todo[tp]
        if out or fetched:
            last_progress = time.monotonic()
            if out:
                yield out
        elif time.monotonic() - last_progress > idle_timeout_s:
            missing = {f"{tp.topic}/{tp.partition}": r for tp, r in todo.items()}
            raise OpsError(
                f"no records arrived for {idle_timeout_s:.0f}s; still expected {missing}"
            )
    c.unsubscribe()


async def read_one(c: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> Record | None:
    bounds = (await log_bounds(c, [tp]))[tp]
    if not bounds.beginning <= offset < bounds.end:
        return None
    async for batch in read_range(c, {tp: (offset, offset + 1)}):
        for record in batch:
            if record.offset == offset:
                return record
    return None


# --- consumer groups ------------------------------------------------------------------------


async def committed_offsets(
    settings: Settings, group: str, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets, read through a consumer of that group that never
    joins it (the admin API's ListConsumerGroupOffsets cannot be parsed from Tansu)."""
    async with consumer(settings, group_id=group) as c:
        return {tp: await c.committed(tp) for tp in tps}


@dataclass(frozen=True)
class GroupState:
    state: str
    members: int
    assigned: bool  # some member reports a partition assignment (real Kafka's live members)


async def describe_group(settings: Settings, group: str) -> GroupState:
    client = await admin_client(settings.kafka_bootstrap, timeout_s=10)
    try:
        responses = await client.describe_consumer_groups([group])
    finally:
        await client.close()
    for response in responses:
        for entry in response.groups:
            error_code, name, state, _protocol_type, _protocol, members = entry[:6]
            if name == group and error_code == 0:
                return GroupState(
                    state=state or "Empty",
                    members=len(members),
                    assigned=any(bool(m[4]) for m in members),
                )
    return GroupState(state="Unknown", members=-1, assigned=False)


async def _settled(settings: Settings, group: str, timeout_s: float) -> None:
    async def stable() -> bool:
        return (await describe_group(settings, group)).state in ("Stable", "Empty", "Dead")

    with contextlib.suppress(TimeoutError):
        await wait_for(stable, timeout_s=timeout_s, interval_s=0.2)


LIVE_HINT = "stop its workers first (a stopped worker leaves its group at once; one killed "
LIVE_HINT += "with kill -9 is dropped after the session timeout)"


@contextlib.asynccontextmanager
async def exclusive_group(
    settings: Settings, group: str, tps: Sequence[TopicPartition]
) -> AsyncIterator[Callable[[dict[TopicPartition, int]], Any]]:
    """Hold ``group`` with nobody else in it, and yield ``commit(offsets)``.

    Refuses (``OpsError``) while the group has live members. An empty group is not joined:
    offsets are committed as a standalone consumer. A group that lists members is joined:
    if every partition of the topic is assigned to us and we are the only member, the
    listed members were stale (the embedded broker keeps them) and we commit as the
    group's member; otherwise we leave and refuse. On Apache Kafka a listed member with an
    assignment is live, so that case is refused without joining."""
    state = await describe_group(settings, group)
    topic = tps[0].topic
    if state.members == 0 or state.state in ("Empty", "Dead"):
        async with consumer(settings, group_id=group) as c:
            c.assign(list(tps))

            async def commit_standalone(offsets: dict[TopicPartition, int]) -> None:
                try:
                    await c.commit(offsets)
                except KafkaError as e:
                    raise OpsError(
                        f"consumer group {group!r} refused the new offsets ({type(e).__name__}): "
                        f"a member joined meanwhile? {LIVE_HINT}",
                        option="--group",
                    ) from None

            yield commit_standalone
        return
    if state.assigned:
        raise OpsError(
            f"consumer group {group!r} has {state.members} live member(s) "
            f"(state {state.state}); {LIVE_HINT}",
            option="--group",
        )
    timeout_s = 2 * settings.kafka_session_timeout_ms / 1000 + 10
    member = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        fetch_max_wait_ms=_FETCH_WAIT_MS,
    )
    await member.start()
    try:
        try:
            await wait_for(lambda: bool(member.assignment()), timeout_s=timeout_s)
        except TimeoutError:
            raise OpsError(
                f"could not join consumer group {group!r} within {timeout_s:.0f}s to check "
                f"that it is unused; {LIVE_HINT}",
                option="--group",
            ) from None
        after = await describe_group(settings, group)
        all_tps = {TopicPartition(topic, p) for p in member.partitions_for_topic(topic) or ()}
        if set(member.assignment()) != all_tps or after.members > 1:
            # leave, and let the live members settle before returning: stopped in the middle
            # of the rebalance we caused, the embedded broker would wait for them for minutes
            await member.stop()
            await _settled(settings, group, timeout_s)
            raise OpsError(
                f"consumer group {group!r} has other live member(s) "
                f"({after.members} with us); {LIVE_HINT}",
                option="--group",
            )

        async def commit_as_member(offsets: dict[TopicPartition, int]) -> None:
            await member.commit(offsets)

        yield commit_as_member
    finally:
        await member.stop()  # leaves the group

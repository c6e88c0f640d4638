"""Where a topic ends and how far a consumer group got: the numbers behind "has metering
processed everything up to period close?" and consumer lag.

``end_offsets`` (ListOffsets) is not trusted on its own: the embedded broker (Tansu 0.6)
answers with the start of the last record batch + 1, short of the true end when producers
send multi-record batches. The high watermark of a fetch response is right on every broker,
so the true end is read by fetching from one before the listed end.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from workers.settings import Settings


class OffsetsUnavailable(Exception):
    pass


def _consumer(settings: Settings, group: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=settings.kafka_request_timeout_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_partition_fetch_bytes=64 * 1024,
    )


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise OffsetsUnavailable(f"topic {topic!r} has no partitions (does it exist?)")
    return [TopicPartition(topic, p) for p in sorted(parts)]


class OffsetReader:
    """Long-lived clients for reading end offsets and committed group offsets."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._ends: AIOKafkaConsumer | None = None
        self._groups: dict[str, AIOKafkaConsumer] = {}

    async def _client(self, group: str | None) -> AIOKafkaConsumer:
        if group is None:
            if self._ends is None:
                self._ends = _consumer(self.settings, None)
                await self._ends.start()
            return self._ends
        if group not in self._groups:
            consumer = _consumer(self.settings, group)  # never subscribes: does not join
            await consumer.start()
            self._groups[group] = consumer
        return self._groups[group]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset to be written, per partition."""
        consumer = await self._client(None)
        tps = await _partitions(consumer, topic)
        ends = await true_ends(consumer, tps, timeout_s=self.timeout_s)
        return {tp.partition: end for tp, end in ends.items()}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset per partition (0 where it committed nothing)."""
        consumer = await self._client(group)
        tps = await _partitions(consumer, topic)
        values = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
        return {tp.partition: v or 0 for tp, v in zip(tps, values, strict=True)}

    async def close(self) -> None:
        clients = [c for c in (self._ends, *self._groups.values()) if c is not None]
        self._ends, self._groups = None, {}
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


def caught_up(committed: dict[int, int], ends: dict[str, int] | dict[int, int]) -> bool:
    """True when the group committed at least ``ends`` (a snapshot) on every partition."""
    return all(committed.get(int(p), 0) >= int(end) for p, end in ends.items())


async def true_ends(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    *,
    floor: dict[TopicPartition, int] | None = None,
    timeout_s: float = 10.0,
) -> dict[TopicPartition, int]:
    """Each partition's end (the offset of the next record written), right on every broker:
    ListOffsets, then a fetch from one below each listed end, whose high watermark (and last
    record) gives the true end. ``floor``: partitions whose log starts there (nothing to
    probe when the listed end is not past it). Uses (and then clears) ``consumer``'s
    assignment."""
    listed: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    ends = dict(listed)
    probe = [tp for tp in tps if listed[tp] > (floor or {}).get(tp, 0)]
    if not probe:
        return ends
    consumer.assign(probe)
    try:
        for tp in probe:
            consumer.seek(tp, listed[tp] - 1)
        deadline = time.monotonic() + timeout_s
        waiting = set(probe)
        while waiting:
            if time.monotonic() > deadline:
                raise OffsetsUnavailable(f"no fetch answer for {sorted(map(str, waiting))}")
            fetched = await consumer.getmany(*waiting, timeout_ms=200)
            for tp, records in fetched.items():
                if records:  # this fetch's answer, so its high watermark is current
                    hw = consumer.highwater(tp) or 0
                    ends[tp] = max(hw, records[-1].offset + 1, listed[tp])
                    waiting.discard(tp)
    finally:
        consumer.unsubscribe()  # no background fetching between probes
    return ends

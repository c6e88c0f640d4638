"""``billstream lag``: per consumer group and partition, the committed offset, the end of
the log and the difference; the same numbers as Prometheus gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from prometheus_client import REGISTRY, generate_latest

from workers.ops import kafka
from workers.ops.inventory import ConsumerInfo
from workers.runtime import metrics
from workers.runtime.jobs import JobLoop
from workers.settings import Settings

# --- the pure core -------------------------------------------------------------------------


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has not committed this partition yet
    beginning: int
    end: int

    @property
    def lag(self) -> int:
        """Records the group has yet to read. Without a commit, everything still in the log
        (the runtime starts from the earliest offset)."""
        position = self.committed if self.committed is not None else self.beginning
        return max(0, self.end - max(position, self.beginning))

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        }


def totals(rows: Sequence[LagRow]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        out[(r.group, r.topic)] = out.get((r.group, r.topic), 0) + r.lag
    return out


def set_gauges(rows: Sequence[LagRow]) -> None:
    for r in rows:
        labels = {"group": r.group, "topic": r.topic, "partition": str(r.partition)}
        metrics.CONSUMER_LAG.labels(**labels).set(r.lag)
        metrics.CONSUMER_COMMITTED_OFFSET.labels(**labels).set(
            r.committed if r.committed is not None else -1
        )
        metrics.TOPIC_END_OFFSET.labels(topic=r.topic, partition=str(r.partition)).set(r.end)


LAG_METRICS = (
    "billstream_consumer_lag",
    "billstream_consumer_committed_offset",
    "billstream_topic_end_offset",
)


def prometheus_text(rows: Sequence[LagRow]) -> str:
    """The rows as Prometheus text exposition (only the lag gauges)."""
    set_gauges(rows)
    return generate_latest(REGISTRY.restricted_registry(list(LAG_METRICS))).decode()


# --- the I/O ---------------------------------------------------------------------------------


async def measure(settings: Settings, pairs: Sequence[tuple[str, str]]) -> list[LagRow]:
    """Lag of each ``(group, topic)``. Topics that do not exist are skipped."""
    async with kafka.consumer(settings) as c:
        existing = await c.topics()
        tps_of: dict[str, list[TopicPartition]] = {}
        for _, topic in pairs:
            if topic in existing and topic not in tps_of:
                tps_of[topic] = await kafka.topic_partitions(c, topic)
        bounds = await kafka.log_bounds(c, [tp for tps in tps_of.values() for tp in tps])
    rows: list[LagRow] = []
    for group, topic in pairs:
        tps = tps_of.get(topic)
        if not tps:
            continue
        committed = await kafka.committed_offsets(settings, group, tps)
        rows.extend(
            LagRow(group, topic, tp.partition, committed[tp], bounds[tp].beginning, bounds[tp].end)
            for tp in tps
        )
    return rows


def pairs_of(
    consumers: Sequence[ConsumerInfo], group: str | None = None, topic: str | None = None
) -> list[tuple[str, str]]:
    """The ``(group, topic)`` pairs to measure: the workers' consumers, narrowed by
    ``--group``/``--topic``; a group and topic no worker declares are measured as given."""
    pairs = [
        (c.group, c.topic)
        for c in consumers
        if (group is None or c.group == group) and (topic is None or c.topic == topic)
    ]
    if not pairs and group is not None and topic is not None:
        pairs = [(group, topic)]
    return list(dict.fromkeys(pairs))


def monitor(
    settings: Settings,
    pairs: Sequence[tuple[str, str]],
    stopping: asyncio.Event,
    interval_s: float = 15.0,
) -> JobLoop:
    """The job that refreshes the lag gauges every ``interval_s`` until ``stopping`` is set
    (``billstream lag --serve``); a failed measurement is logged and the next one retries."""

    async def refresh() -> bool:
        set_gauges(await measure(settings, pairs))
        return False

    return JobLoop("ops.lag", refresh, interval_s, stopping)

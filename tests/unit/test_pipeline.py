"""The batch pipeline's offset rules (workers/runtime/pipeline.py, ADR 0042), against a fake
consumer: offsets are committed per partition only after a batch applied, in order, and a
batch that was not applied is read again, even when the next one was fetched already."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from workers.devstack import wait_for
from workers.runtime.errors import ShuttingDown
from workers.runtime.pipeline import Pipeline

T = "t"


def records(partition: int, first: int, last: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(T, partition, o, 0, 0, b"k", b"v", None, 1, 1, ())
        for o in range(first, last + 1)
    ]


def tp(partition: int) -> TopicPartition:
    return TopicPartition(T, partition)


class FakeConsumer:
    def __init__(self, partitions: Sequence[int] = (0, 1)) -> None:
        self.assigned = {tp(p) for p in partitions}
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


class FakeProcessor:
    """Records what it decodes and applies; ``gate`` holds an apply; ``fail`` raises in it."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.decoded: list[list[int]] = []
        self.applied: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None

    async def decode(self, batch: Sequence[ConsumerRecord[bytes, bytes]]) -> Any:
        self.decoded.append([r.offset for r in batch])
        return [r.offset for r in batch]

    async def apply(self, batch: list[int]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        self.applied.append(batch)


def pipeline() -> tuple[Pipeline[Any], FakeProcessor]:
    processor = FakeProcessor()
    return Pipeline(processor), processor  # type: ignore[arg-type]


async def feed(
    pipe: Pipeline[Any], consumer: FakeConsumer, *batches: list[ConsumerRecord[bytes, bytes]]
) -> None:
    """Submit each batch in turn and wait until it is applied (or held)."""
    for batch in batches:
        await pipe.submit(batch, consumer)
        await pipe.drain()


async def failed_at_10() -> tuple[Pipeline[Any], FakeProcessor, FakeConsumer]:
    """A pipeline whose batch of partition 0, offsets 10..12, failed with a bug."""
    pipe, proc = pipeline()
    consumer = FakeConsumer()
    proc.fail = RuntimeError("a bug")
    await feed(pipe, consumer, records(0, 10, 12))
    return pipe, proc, consumer


async def test_the_next_batch_decodes_while_one_applies_and_offsets_follow_the_applies() -> None:
    pipe, proc = pipeline()
    consumer = FakeConsumer()
    proc.gate = asyncio.Event()
    await pipe.submit(records(0, 0, 2), consumer)
    second = asyncio.create_task(pipe.submit(records(0, 3, 4) + records(1, 0, 1), consumer))
    # the second batch is decoded while the first is still applying: nothing committed
    await wait_for(lambda: len(proc.decoded) == 2, interval_s=0.001)
    assert proc.decoded == [[0, 1, 2], [3, 4, 0, 1]]
    assert not second.done()  # it waits for the first batch before starting its own
    assert proc.applied == [] and consumer.commits == []
    proc.gate.set()
    await second
    await pipe.drain()
    assert proc.applied == [[0, 1, 2], [3, 4, 0, 1]]
    # explicit offsets, last + 1 per partition, after each apply (never a consumer position)
    assert consumer.commits == [{tp(0): 3}, {tp(0): 5, tp(1): 2}]
    assert consumer.seeks == []


async def test_a_partition_revoked_meanwhile_is_not_committed() -> None:
    pipe, _ = pipeline()
    consumer = FakeConsumer()
    consumer.assigned.discard(tp(1))
    await feed(pipe, consumer, records(0, 0, 1) + records(1, 0, 1))
    assert consumer.commits == [{tp(0): 2}]


async def test_a_failed_batch_is_read_again_and_a_batch_fetched_before_the_seek_is_held() -> None:
    pipe, proc, consumer = await failed_at_10()
    assert proc.applied == [] and consumer.commits == []
    assert consumer.seeks == [(tp(0), 10)]

    # fetched before the seek: partition 0 resumes after 12, partition 1 is new
    await feed(pipe, consumer, records(0, 13, 14) + records(1, 5, 6))
    assert proc.applied == [] and consumer.commits == []
    assert consumer.seeks[1:] == [(tp(0), 10), (tp(1), 5)]

    # the re-read, from where each partition was held
    await feed(pipe, consumer, records(0, 10, 14) + records(1, 5, 6))
    assert proc.applied == [[10, 11, 12, 13, 14, 5, 6]]
    assert consumer.commits == [{tp(0): 15, tp(1): 7}]


async def test_after_a_failure_a_batch_of_other_partitions_still_applies() -> None:
    pipe, proc, consumer = await failed_at_10()
    await feed(pipe, consumer, records(1, 0, 1))
    assert proc.applied == [[0, 1]]
    assert consumer.commits == [{tp(1): 2}]
    # partition 0 is still held: its next batch must start at 10 to apply
    await feed(pipe, consumer, records(0, 13, 13))
    assert proc.applied == [[0, 1]]


async def test_a_redelivery_from_before_the_held_record_applies() -> None:
    """After a rebalance the partition restarts at its committed offset, before the held one."""
    pipe, proc, consumer = await failed_at_10()
    await feed(pipe, consumer, records(0, 7, 12))
    assert proc.applied == [[7, 8, 9, 10, 11, 12]]
    assert consumer.commits == [{tp(0): 13}]


async def test_while_stopping_no_batch_starts_and_its_records_are_held() -> None:
    pipe, proc = pipeline()
    consumer = FakeConsumer()
    proc.stopping.set()
    await feed(pipe, consumer, records(0, 4, 5))
    assert proc.applied == [] and consumer.commits == []
    assert consumer.seeks == [(tp(0), 4)]


async def test_a_batch_whose_decoding_fails_is_read_again() -> None:
    pipe, proc = pipeline()
    consumer = FakeConsumer()

    async def broken(batch: Sequence[ConsumerRecord[bytes, bytes]]) -> Any:
        raise RuntimeError("a bug")

    proc.decode = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await pipe.submit(records(0, 3, 4), consumer)
    assert consumer.seeks == [(tp(0), 3)] and consumer.commits == []


async def test_a_batch_given_up_for_the_stop_is_not_committed() -> None:
    pipe, proc = pipeline()
    consumer = FakeConsumer()
    proc.fail = ShuttingDown()
    await feed(pipe, consumer, records(1, 0, 3))
    assert consumer.commits == []
    assert consumer.seeks == [(tp(1), 0)]

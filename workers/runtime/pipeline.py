"""One batch decodes while the one before it is applied (ADR 0042).

FastStream hands a subscriber one batch at a time and fetches the next only when the
subscriber returns. So the subscriber decodes its batch (CPU only), waits until the batch
before it is applied and its offsets committed, starts this batch's transaction as a task
and returns: the fetch and the decoding of batch N+1 then run while PostgreSQL works on
batch N. At most one transaction per consumer runs at a time, in order, so a handler still
sees every earlier batch committed.

Offsets are committed by that task after its database commit, explicitly: the last offset
+ 1 of each partition in the batch. Never the consumer's position, which already covers the
batch being decoded. A batch that is not applied (the worker is stopping, or a bug) seeks
its partitions back to its first records; a batch fetched before that seek is not applied
either, so nothing is ever committed past a record that was not applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from workers.runtime.errors import ShuttingDown
from workers.runtime.tx import Envelope

if TYPE_CHECKING:
    from workers.runtime.consumer import BatchProcessor, Decoded

E = TypeVar("E", bound=Envelope)
Records = Sequence[ConsumerRecord[bytes, bytes]]

log = structlog.get_logger("billstream.runtime")


def first_offsets(records: Records) -> dict[TopicPartition, int]:
    """The first offset of each partition in ``records``."""
    # keyed by (topic, partition) as a plain tuple: a TopicPartition per record (a
    # NamedTuple, built in Python) cost more than the rest of the loop
    first: dict[tuple[str, int], int] = {}
    get = first.get
    for r in records:
        key = r.topic, r.partition
        if r.offset < get(key, r.offset + 1):
            first[key] = r.offset
    return {TopicPartition(*key): offset for key, offset in first.items()}


def next_offsets(records: Records) -> dict[TopicPartition, int]:
    """The offset to commit for each partition in ``records``: its last offset + 1."""
    following: dict[tuple[str, int], int] = {}
    get = following.get
    for r in records:
        key = r.topic, r.partition
        if r.offset >= get(key, 0):
            following[key] = r.offset + 1
    return {TopicPartition(*key): offset for key, offset in following.items()}


class Pipeline(Generic[E]):
    """The batches of one consumer: decode the next while the current one is applied."""

    def __init__(self, processor: BatchProcessor[E]) -> None:
        self.processor = processor
        self.running: asyncio.Task[None] | None = None
        # partition → the first record not applied: re-reading must start there
        self.resume: dict[TopicPartition, int] = {}

    async def submit(self, records: Records, consumer: AIOKafkaConsumer) -> None:
        """Decode ``records``, then start applying them once the batch before is done."""
        try:
            batch = await self.processor.decode(records)
            await self.drain()
        except BaseException:  # cancelled (stopping), or a bug: read them again
            self._hold(consumer, records)
            raise
        if self.processor.stopping.is_set():
            self._hold(consumer, records)
        elif self._admit(consumer, records):
            self.running = asyncio.create_task(self._apply(batch, records, consumer))

    async def drain(self) -> None:
        """Wait until the batch in flight is applied and committed, or has given up."""
        running = self.running
        if running is not None:
            await asyncio.wait([running])
            if self.running is running:
                self.running = None

    async def _apply(self, batch: Decoded[E], records: Records, consumer: AIOKafkaConsumer) -> None:
        try:
            await self.processor.apply(batch)
        except ShuttingDown:
            self._hold(consumer, records)
            return
        except asyncio.CancelledError:
            self._hold(consumer, records)
            raise
        except Exception:
            # a bug (transient failures retry, permanent ones dead-letter): never move past
            # these records without applying them; they are read again
            log.exception("batch failed; its records will be read again", size=len(records))
            self._hold(consumer, records)
            return
        await self._commit(consumer, records)

    async def _commit(self, consumer: AIOKafkaConsumer, records: Records) -> None:
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in next_offsets(records).items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as e:
            # a rebalance took the partitions: the new owner re-reads, the inbox dedupes
            log.warning("offset commit failed; batch will be redelivered", error=str(e))

    def _admit(self, consumer: AIOKafkaConsumer, records: Records) -> bool:
        """False for a batch fetched before a seek back: it starts after a record that is
        still to be applied, so it is held too, and read again in order."""
        if not self.resume:
            return True
        first = first_offsets(records)
        if any(offset > self.resume.get(tp, offset) for tp, offset in first.items()):
            self._hold(consumer, records)
            return False
        for tp in first:
            self.resume.pop(tp, None)
        return True

    def _hold(self, consumer: AIOKafkaConsumer, records: Records) -> None:
        """Seek the partitions of ``records`` back to the first record not yet applied."""
        assigned = consumer.assignment()
        for tp, offset in first_offsets(records).items():
            resume = self.resume[tp] = min(offset, self.resume.get(tp, offset))
            if tp in assigned:
                consumer.seek(tp, resume)

"""The one producer: ``acks=all`` (idempotent where the broker supports it), connected on
first use, handing aiokafka one record batch per (topic, partition) instead of one ``send``
per record (each ``send`` costs tens of µs of Python; the outbox relay publishes thousands of
rows a second, the ingress tens of thousands of events). The outbox relay, the ingress and
the operations commands all publish through it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from workers.settings import Settings

MAX_BATCH_SIZE = 262_144  # per partition per produce request (aiokafka's default: 16 KiB)
MAX_REQUEST_SIZE = 1_048_576  # aiokafka's default; Kafka's default message.max.bytes is ~1 MiB

#: Kafka's own headers: (name, bytes) pairs, repeatable, copied as they are
RawHeaders = Sequence[tuple[str, bytes]]


@functools.lru_cache(maxsize=65_536)
def partition_hash(key: bytes) -> int:
    """aiokafka's default partitioner hash (murmur2, pure Python), memoised: keys recur."""
    return int(murmur2(key)) & 0x7FFFFFFF


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    #: text headers (outbox rows), or Kafka's own pairs kept as they are (replay, redrive)
    headers: Mapping[str, str] | RawHeaders


_Entry = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # aiokafka wants a list
_NO_HEADERS: list[tuple[str, bytes]] = []  # never changed


class Handed:
    """Records handed to the producer; ``acknowledged()`` returns once the broker
    acknowledged every one of them (acks=all), or raises the first failure."""

    def __init__(self, futures: list[asyncio.Future[object]], count: int) -> None:
        self.futures = futures
        self.count = count

    async def acknowledged(self) -> None:
        try:
            for f in self.futures:
                await f
        finally:
            self.retrieve()

    def retrieve(self) -> None:
        """Retrieve every failure (no "exception was never retrieved")."""
        for f in self.futures:
            if f.done() and not f.cancelled():
                f.exception()


class RecordPublisher:
    """Connected on first use; ``publish`` returns once the broker acknowledged every record.
    Records of one key keep their order (same partition as ``producer.send`` would choose,
    appended in order); a record larger than ``max_request_size`` is refused before anything
    is sent (``MessageSizeTooLargeError``), as ``producer.send`` does."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._partition_locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def connect(self) -> AIOKafkaProducer:
        """The started producer (started now if it was not)."""
        if self._producer is not None:
            return self._producer
        async with self._lock:  # one producer, however many callers start at once
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=self.settings.kafka_idempotence,
                    request_timeout_ms=self.settings.kafka_request_timeout_ms,
                    linger_ms=2,
                    max_batch_size=MAX_BATCH_SIZE,
                    max_request_size=MAX_REQUEST_SIZE,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def publish(self, records: Sequence[Record]) -> None:
        await (await self.hand_over(records)).acknowledged()

    async def publish_to(self, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """``publish`` for keyed records of one topic with no headers, given as ``(key,
        value)`` pairs (the ingress's hot path: no ``Record`` per message)."""
        producer = await self.connect()
        partitions = await self._partitions(producer, topic)
        count = len(partitions)
        by_partition: dict[int, list[_Entry]] = {}
        for key, value in messages:
            if len(key) + len(value) > MAX_REQUEST_SIZE // 2:
                _check_size(key, value, _NO_HEADERS)
            p = partitions[partition_hash(key) % count]
            entries = by_partition.get(p)
            if entries is None:
                entries = by_partition[p] = []
            entries.append((key, value, _NO_HEADERS))
        groups = {(topic, p): entries for p, entries in by_partition.items()}
        await (await self._hand_over(producer, groups, len(messages))).acknowledged()

    async def hand_over(self, records: Sequence[Record]) -> Handed:
        """Give ``records`` to the producer without waiting for the broker (a caller that
        keeps producing while earlier records are in flight awaits ``acknowledged()``)."""
        producer = await self.connect()
        groups: dict[tuple[str, int], list[_Entry]] = {}
        partitions: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            ps = partitions.get(r.topic)
            if ps is None:
                ps = partitions[r.topic] = await self._partitions(producer, r.topic)
            h = partition_hash(r.key) if r.key is not None else i
            hs = r.headers
            if isinstance(hs, Mapping):
                headers = [(k, v.encode()) for k, v in hs.items()]
            else:
                headers = hs if isinstance(hs, list) else list(hs)
            if len(r.key or b"") + len(r.value) > MAX_REQUEST_SIZE // 2:
                _check_size(r.key, r.value, headers)
            groups.setdefault((r.topic, ps[h % len(ps)]), []).append((r.key, r.value, headers))
        return await self._hand_over(producer, groups, len(records))

    @staticmethod
    async def _partitions(producer: AIOKafkaProducer, topic: str) -> list[int]:
        return sorted(await producer.partitions_for(topic))

    async def _hand_over(
        self, producer: AIOKafkaProducer, groups: dict[tuple[str, int], list[_Entry]], count: int
    ) -> Handed:
        handed = Handed([], count)
        try:
            for (topic, p), entries in groups.items():
                # One caller at a time hands batches to a partition: the producer keeps one
                # undrained batch per partition and makes the others wait, and with many
                # waiters its wait loop times out early (aiokafka 0.14 subtracts the elapsed
                # time from the deadline cumulatively) -> spurious timeouts.
                async with self._partition_lock(topic, p):
                    batch = producer.create_batch()
                    for key, value, headers in entries:
                        added = batch.append(timestamp=None, key=key, value=value, headers=headers)
                        if added is not None:
                            continue
                        handed.futures.append(await producer.send_batch(batch, topic, partition=p))
                        batch = producer.create_batch()  # the first record always fits
                        batch.append(timestamp=None, key=key, value=value, headers=headers)
                    handed.futures.append(await producer.send_batch(batch, topic, partition=p))
        except BaseException:
            handed.retrieve()
            raise
        return handed

    def _partition_lock(self, topic: str, partition: int) -> asyncio.Lock:
        lock = self._partition_locks.get((topic, partition))
        if lock is None:
            lock = self._partition_locks[(topic, partition)] = asyncio.Lock()
        return lock

    async def ready(self, timeout_s: float = 2.0) -> None:
        """Raises unless the broker answers a metadata request within ``timeout_s``."""
        producer = await self.connect()
        async with asyncio.timeout(timeout_s):
            await producer.client.fetch_all_metadata()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _check_size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    """The check ``producer.send`` makes: no record larger than ``max_request_size``."""
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    if size > MAX_REQUEST_SIZE:
        raise MessageSizeTooLargeError(
            f"The message is {size} bytes when serialized which is larger than the "
            "maximum request size you have configured with the max_request_size "
            "configuration"
        )

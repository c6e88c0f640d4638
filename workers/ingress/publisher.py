"""Publishing from the ingress: wait for the broker's acknowledgement of every message."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from workers.ingress.problems import Problem
from workers.runtime.publisher import MAX_BATCH_SIZE, partition_hash
from workers.settings import Settings

log = structlog.get_logger("billstream.ingress")

RETRY_AFTER_S = 5
MAX_REQUEST_SIZE = 1_048_576  # aiokafka's default; Kafka's default message.max.bytes is ~1 MiB


def unavailable(detail: str) -> Problem:
    return Problem(
        503,
        "broker_unavailable",
        "The event broker is unavailable",
        f"{detail}; retry the whole request (events already sent are deduplicated).",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class Publisher:
    """One idempotent (where supported) ``acks=all`` producer, connected on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._max_message = MAX_REQUEST_SIZE
        self._partition_locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap,
                    client_id="billstream-ingress",
                    acks="all",
                    enable_idempotence=self.settings.kafka_idempotence,
                    request_timeout_ms=self.settings.kafka_request_timeout_ms,
                    linger_ms=2,
                    max_batch_size=MAX_BATCH_SIZE,
                    max_request_size=MAX_REQUEST_SIZE,
                )
                try:
                    await producer.start()
                except (KafkaError, OSError) as e:
                    await producer.stop()
                    raise unavailable(f"cannot connect to the broker ({type(e).__name__})") from e
                self._producer = producer
        return self._producer

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        """Publish ``(key, value)`` pairs; return once the broker acknowledged all (acks=all).

        Each message goes to the partition ``producer.send`` would choose (aiokafka's
        default murmur2 partitioner), in order; the messages of one call are handed to the
        producer as one record batch per partition (``send_batch``), not one by one.
        """
        producer = await self._connected()
        futures: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(self.settings.kafka_request_timeout_ms / 1000 + 1):
                partitions = list(await producer.partitions_for(topic))
                count = len(partitions)
                by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
                for key, value in messages:
                    if len(key) + len(value) > self._max_message // 2:
                        self._check_size(key, value)
                    p = partitions[partition_hash(key) % count]
                    by_partition.setdefault(p, []).append((key, value))
                for p, pairs in by_partition.items():
                    # One caller at a time hands batches to a partition: the producer keeps
                    # one undrained batch per partition and makes the others wait, and with
                    # many waiters its wait loop times out early (aiokafka 0.14 subtracts the
                    # elapsed time from the deadline cumulatively) -> spurious 503s.
                    async with self._partition_lock(topic, p):
                        batch = producer.create_batch()
                        for key, value in pairs:
                            if batch.append(timestamp=None, key=key, value=value) is None:
                                futures.append(await producer.send_batch(batch, topic, partition=p))
                                batch = producer.create_batch()  # the first record always fits
                                batch.append(timestamp=None, key=key, value=value)
                        futures.append(await producer.send_batch(batch, topic, partition=p))
                for future in futures:
                    await future
        except MessageSizeTooLargeError as e:
            raise Problem(413, "event_too_large", "An event is too large", str(e)) from e
        except (KafkaError, TimeoutError, OSError) as e:
            for future in futures:  # retrieve the other failures too (no "never retrieved")
                if future.done() and not future.cancelled():
                    future.exception()
            log.warning("publish failed", topic=topic, error=repr(e))
            raise unavailable(f"publishing to {topic} failed ({type(e).__name__})") from e

    def _partition_lock(self, topic: str, partition: int) -> asyncio.Lock:
        lock = self._partition_locks.get((topic, partition))
        if lock is None:
            lock = self._partition_locks[(topic, partition)] = asyncio.Lock()
        return lock

    def _check_size(self, key: bytes, value: bytes) -> None:
        """The check ``producer.send`` makes: no message larger than ``max_request_size``."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
        if size > self._max_message:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the "
                "maximum request size you have configured with the max_request_size "
                "configuration"
            )

    async def ready(self) -> bool:
        try:
            producer = await self._connected()
            async with asyncio.timeout(2):
                await producer.client.fetch_all_metadata()
            return True
        except (Problem, KafkaError, TimeoutError, OSError):
            return False

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

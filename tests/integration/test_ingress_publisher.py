"""The ingress publisher: every message where ``producer.send`` would put it, in order."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from schemas import topics
from tests.conftest import KafkaServer
from workers.ingress.publisher import Publisher
from workers.runtime.publisher import MAX_BATCH_SIZE
from workers.settings import Settings


async def test_messages_land_on_the_default_partition_in_order(kafka: KafkaServer) -> None:
    settings = Settings(kafka_bootstrap=kafka.bootstrap, kafka_idempotence=not kafka.embedded)
    publisher = Publisher(settings)
    # enough bytes per partition to need several record batches per call
    value_size = 2_000
    count = 8 * MAX_BATCH_SIZE // value_size
    messages = [
        (f"acme:customer-{i % 37}".encode(), f"{i:08d}".encode() + b"x" * value_size)
        for i in range(count)
    ]
    try:
        await publisher.publish(topics.USAGE, messages[: count // 2])
        await publisher.publish(topics.USAGE, messages[count // 2 :])
    finally:
        await publisher.close()

    consumer = AIOKafkaConsumer(
        topics.USAGE,
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        got: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                got += [(tp.partition, r.key, r.value) for r in records]
        partitions = sorted(consumer.partitions_for_topic(topics.USAGE) or [])
    finally:
        await consumer.stop()

    assert len(got) == count
    expected_partition = {
        key: DefaultPartitioner()(key, partitions, partitions) for key, _ in messages
    }
    for partition, key, _ in got:
        assert partition == expected_partition[key]
    # per partition, the order of publishing
    for p in partitions:
        on_p = [value for partition, _, value in got if partition == p]
        assert on_p == [value for key, value in messages if expected_partition[key] == p]

"""Where a topic really ends and how far a group got: the numbers invoicing waits on."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import topics
from tests.conftest import KafkaServer
from workers.runtime.offsets import OffsetReader, caught_up
from workers.settings import Settings


async def test_end_offsets_count_every_record_of_multi_record_batches(
    settings: Settings, kafka: KafkaServer
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        for round_, n in enumerate((1, 3, 5)):  # record batches; the last of 5 records
            sent = [await producer.send(topics.USAGE, b"x", partition=0) for _ in range(n)]
            await asyncio.gather(*sent)
            sent = [await producer.send(topics.USAGE, b"y", partition=1) for _ in range(round_)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    reader = OffsetReader(settings)
    try:
        ends = await reader.end_offsets(topics.USAGE)
        assert ends == {0: 9, 1: 3, 2: 0}
        # asked again later (after more records), it is current, not the first answer
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topics.USAGE, b"z", partition=0)
                                   for _ in range(4)])  # fmt: skip
        finally:
            await producer.stop()
        assert await reader.end_offsets(topics.USAGE) == {0: 13, 1: 3, 2: 0}

        # a group that committed 9 on partition 0 and nothing elsewhere
        group = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id="g", enable_auto_commit=False
        )
        await group.start()
        try:
            group.assign([TopicPartition(topics.USAGE, 0)])
            await group.commit({TopicPartition(topics.USAGE, 0): 9})
        finally:
            await group.stop()
        committed = await reader.committed("g", topics.USAGE)
        assert committed == {0: 9, 1: 0, 2: 0}
        assert caught_up(committed, {"0": 9, "1": 0})
        assert not caught_up(committed, {"0": 9, "1": 3})
        assert not caught_up(committed, ends)
    finally:
        await reader.close()

"""Creating billstream's topics (``billstream topics ensure``)."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from schemas.topics import all_topic_names


async def admin_client(bootstrap: str, timeout_s: float = 30.0) -> AIOKafkaAdminClient:
    """A started admin client; waits (with a deadline) for the broker to answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await client.start()
            return client
        except KafkaConnectionError:
            await client.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def ensure_topics(
    bootstrap: str, *, partitions: int, replication: int, names: list[str] | None = None
) -> list[str]:
    """Create every missing topic; return the names created (existing ones are left as they are)."""
    wanted = names if names is not None else all_topic_names()
    client = await admin_client(bootstrap)
    try:
        existing = set(await client.list_topics())
        missing = [n for n in wanted if n not in existing]
        created: list[str] = []
        for name in missing:
            try:
                await client.create_topics(
                    [NewTopic(name, num_partitions=partitions, replication_factor=replication)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile
        return created
    finally:
        await client.close()

"""Publishing from the ingress: the runtime's one producer (``RecordPublisher``), its
failures answered as problems: 503 with ``Retry-After`` when the broker is unavailable, 413
for an event too large to publish."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from workers.ingress.problems import Problem
from workers.runtime.publisher import RecordPublisher
from workers.settings import Settings

log = structlog.get_logger("billstream.ingress")

RETRY_AFTER_S = 5


def unavailable(detail: str) -> Problem:
    return Problem(
        503,
        "broker_unavailable",
        "The event broker is unavailable",
        f"{detail}; retry the whole request (events already sent are deduplicated).",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class Publisher:
    """Publish, or answer why not: ``publish`` returns once the broker acknowledged every
    message (acks=all), else raises a ``Problem``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records = RecordPublisher(settings, client_id="billstream-ingress")

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        """Publish ``(key, value)`` pairs to ``topic``, each where ``producer.send`` would
        put it (aiokafka's default murmur2 partitioner), in order."""
        try:
            await self.records.connect()
        except (KafkaError, OSError) as e:
            raise unavailable(f"cannot connect to the broker ({type(e).__name__})") from e
        try:
            async with asyncio.timeout(self.settings.kafka_request_timeout_ms / 1000 + 1):
                await self.records.publish_to(topic, messages)
        except MessageSizeTooLargeError as e:
            raise Problem(413, "event_too_large", "An event is too large", str(e)) from e
        except (KafkaError, TimeoutError, OSError) as e:
            log.warning("publish failed", topic=topic, error=repr(e))
            raise unavailable(f"publishing to {topic} failed ({type(e).__name__})") from e

    async def ready(self) -> bool:
        try:
            await self.records.ready()
            return True
        except (KafkaError, TimeoutError, OSError):
            return False

    async def close(self) -> None:
        await self.records.stop()

"""Publishing from the ingress: wait for the broker's acknowledgement of every message."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from workers.ingress.problems import Problem
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
    """One idempotent (where supported) ``acks=all`` producer, connected on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

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
                )
                try:
                    await producer.start()
                except (KafkaError, OSError) as e:
                    await producer.stop()
                    raise unavailable(f"cannot connect to the broker ({type(e).__name__})") from e
                self._producer = producer
        return self._producer

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        """Publish ``(key, value)`` pairs; return once the broker acknowledged all (acks=all)."""
        producer = await self._connected()
        try:
            async with asyncio.timeout(self.settings.kafka_request_timeout_ms / 1000 + 1):
                futures = [await producer.send(topic, value, key=key) for key, value in messages]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError, OSError) as e:
            log.warning("publish failed", topic=topic, error=repr(e))
            raise unavailable(f"publishing to {topic} failed ({type(e).__name__})") from e

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

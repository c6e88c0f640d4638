"""Assembles and runs one worker process: broker, database, consumers, relay, health."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.db import create_engine, ping, session_factory
from workers.runtime.consumer import Runtime
from workers.runtime.relay import OutboxRelay
from workers.settings import Settings

log = structlog.get_logger("billstream.worker")


def make_broker(settings: Settings, client_id: str) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        graceful_timeout=settings.graceful_timeout_s,
        log_level=logging.DEBUG,  # per-message lines only at DEBUG; the runtime logs what matters
        logger=logging.getLogger("faststream"),
    )


@dataclass
class Worker:
    name: str
    settings: Settings
    broker: KafkaBroker
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    runtime: Runtime
    relay: OutboxRelay
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await ping(self.engine)
        await self.broker.start()
        self.relay.start()
        log.info("worker started", worker=self.name, bootstrap=self.settings.kafka_bootstrap)

    async def stop(self) -> None:
        """Graceful: no new batch starts, the running one finishes and commits, the group is left."""
        log.info("worker stopping", worker=self.name)
        self.runtime.stop_processing()
        await self.broker.stop()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.relay.stop()
        await self.engine.dispose()
        log.info("worker stopped", worker=self.name)

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def build_worker(
    name: str, settings: Settings, register: Callable[[Runtime], None]
) -> Worker:
    broker = make_broker(settings, client_id=f"billstream-{name}")
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    sessions = session_factory(engine)
    relay = OutboxRelay(
        broker,
        sessions,
        poll_interval_s=settings.outbox_poll_interval_s,
        batch=settings.outbox_batch,
        retry_max_s=settings.retry_max_s,
    )
    runtime = Runtime(
        broker,
        sessions,
        batch_max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        on_committed=relay.wake,
    )
    register(runtime)
    return Worker(name, settings, broker, engine, sessions, runtime, relay)

"""Assembles and runs one worker process: broker, database, consumers, relay, health."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage import inbox, outbox
from storage.db import create_engine, ping, session_factory
from workers.runtime import metrics
from workers.runtime.consumer import Runtime
from workers.runtime.health import HealthServer
from workers.runtime.logging import quiet
from workers.runtime.publisher import RecordPublisher
from workers.runtime.relay import OutboxRelay
from workers.runtime.tx import Tx
from workers.settings import Settings

log = structlog.get_logger("billstream.worker")


def freeze_startup_heap() -> None:
    """Take what is alive after start-up (modules, schemas, clients: it lives as long as the
    process) out of the cyclic GC's full collections, which otherwise rescan it every few
    seconds under load: ~8 µs per event in a worker (bench/metering_stages.py) and 100+ ms
    pauses in the ingress (bench/ingress.py) without this.

    Then collect the young generation every 100,000 net allocations instead of 700: a
    batch's (or a request's) thousands of objects are freed by reference counting when it is
    done, and with the default they were scanned, moved up a generation and scanned again
    while it was alive: ~3 µs per event in the metering bench (bench/RESULTS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 10)


def make_broker(settings: Settings, client_id: str) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        graceful_timeout=settings.graceful_timeout_s,
        log_level=logging.DEBUG,  # per-message lines only at DEBUG; the runtime logs what matters
        # faststream gives its logger a colourised handler of its own when imported: ours only
        # (one format, routine lines at DEBUG: workers/runtime/logging.py)
        logger=quiet(logging.getLogger("faststream")),
    )


async def start_broker(broker: KafkaBroker) -> None:
    """``broker.start()``, but the subscribers start (join their groups) concurrently: one
    group join takes up to half a session timeout, and a worker has several groups."""
    await broker.connect()
    await asyncio.gather(*(sub.start() for sub in broker.subscribers))
    for pub in broker.publishers:
        await pub.start()
    broker.running = True


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

    health: HealthServer | None = None
    preflight: Callable[[], None] | None = None  # raises when the worker cannot run

    async def start(self) -> None:
        if self.preflight is not None:
            self.preflight()
        await ping(self.engine)
        await start_broker(self.broker)
        self.relay.start()
        for loop in self.runtime.loops:
            self.background.append(asyncio.create_task(loop.run(), name=loop.name))
        if self.settings.metrics_port:
            self.health = HealthServer("0.0.0.0", self.settings.metrics_port, self.readiness)
            await self.health.start()
        log.info(
            "worker started",
            worker=self.name,
            bootstrap=self.settings.kafka_bootstrap,
            metrics_port=self.health.port if self.health else None,
        )

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await ping(self.engine)
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"unavailable: {type(e).__name__}"
        checks["broker"] = "ok" if await self.broker.ping(timeout=2) else "unavailable"
        return checks

    async def stop(self) -> None:
        """Graceful: no new batch or job tick starts; the batches in flight finish and commit
        their offsets, the ticks in flight finish, and the consumer groups are left. Each
        phase is bounded by ``graceful_timeout_s``: a phase that overruns is logged with what
        it waits on and the stop goes on (what did not commit is done again after a
        restart)."""
        log.info("worker stopping", worker=self.name)
        self.runtime.stop_processing()
        await self._within("draining the consumers", self.runtime.drain())
        await self._within("finishing the jobs", self._finish_jobs())
        await self._within("leaving the consumer groups", self.broker.stop())
        await self.relay.stop()
        if self.health is not None:
            await self.health.stop()
        await self.engine.dispose()
        log.info("worker stopped", worker=self.name)

    async def _finish_jobs(self) -> None:
        try:
            await asyncio.gather(*self.background, return_exceptions=True)
        finally:  # cancelled (overrun): cancel the jobs too; their transactions roll back
            for task in self.background:
                task.cancel()
            await asyncio.gather(*self.background, return_exceptions=True)
            self.background.clear()

    async def _within(self, phase: str, work: Awaitable[None]) -> None:
        timeout = self.settings.graceful_timeout_s
        try:
            await asyncio.wait_for(work, timeout)
        except TimeoutError:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=stacks)
            log.error(
                "worker stop: a phase overran; going on",
                worker=self.name,
                phase=phase,
                timeout_s=timeout,
                tasks=stacks.getvalue(),
            )

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        freeze_startup_heap()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _housekeeping(runtime: Runtime, retention: timedelta) -> Callable[[], Awaitable[bool]]:
    """The job every worker runs: the outbox backlog gauges, and (hourly) purging inbox rows
    past the dedupe window."""
    next_purge = 0.0

    async def step(tx: Tx) -> None:
        nonlocal next_purge
        rows, oldest = await outbox.backlog(tx.session)
        metrics.OUTBOX_BACKLOG.set(rows)
        metrics.OUTBOX_OLDEST_AGE.set((datetime.now(UTC) - oldest).total_seconds() if oldest else 0)
        if time.monotonic() >= next_purge:
            purged = await inbox.purge(tx.session, retention)
            next_purge = time.monotonic() + 3600
            if purged:
                log.info("inbox purged", rows=purged, older_than_days=retention.days)

    async def tick() -> bool:
        await runtime.jobs.run("housekeeping", step)
        return False

    return tick


def build_worker(
    name: str,
    settings: Settings,
    register: Callable[[Runtime], None],
    preflight: Callable[[], None] | None = None,
) -> Worker:
    """The worker ``name``: its consumers and jobs from ``register``; ``preflight`` runs
    first when it starts (a setting it cannot run without)."""
    broker = make_broker(settings, client_id=f"billstream-{name}")
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    sessions = session_factory(engine, relay=name)
    relay = OutboxRelay(
        RecordPublisher(settings, client_id=f"billstream-{name}-relay"),
        sessions,
        poll_interval_s=settings.outbox_poll_interval_s,
        batch=settings.outbox_batch,
        retry_max_s=settings.retry_max_s,
        adopt_after_s=settings.outbox_adopt_after_s,
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
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        consumer_timeout_ms=settings.kafka_consumer_timeout_ms,
        on_committed=relay.wake,
    )
    register(runtime)
    retention = timedelta(days=settings.inbox_retention_days)
    runtime.job("housekeeping", _housekeeping(runtime, retention), every_s=5)
    return Worker(name, settings, broker, engine, sessions, runtime, relay, preflight=preflight)

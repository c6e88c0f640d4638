"""The outbox relay: publishes committed outbox rows with acks=all, then deletes them.

Every worker process runs one; a PostgreSQL advisory lock per worker name lets exactly one
replica publish that worker's rows at a time (the others are hot standbys), which keeps
rows in commit order per key. Rows of a worker that waited ``adopt_after_s`` (it stopped)
are published by any other worker's relay, under the stopped worker's lock.
At-least-once on the wire: a crash after publishing and before deleting republishes,
and every consumer dedupes by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import outbox
from workers.runtime import metrics
from workers.runtime.jobs import JobLoop
from workers.runtime.publisher import Record, RecordPublisher
from workers.runtime.transient import retrying

log = structlog.get_logger("billstream.relay")

RETRY_INITIAL_S = 0.2
#: how long ``stop`` lets a round in flight finish
STOP_GRACE_S = 10.0


class OutboxRelay:
    def __init__(
        self,
        publisher: RecordPublisher,
        sessions: async_sessionmaker[AsyncSession],
        *,
        poll_interval_s: float,
        batch: int,
        retry_max_s: float = 30.0,
        adopt_after_s: float | None = None,
    ) -> None:
        self.publisher = publisher
        self.sessions = sessions
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.retry_max_s = retry_max_s
        self.adopt_after_s = adopt_after_s  # None: never publish other workers' rows
        self._next_adoption = time.monotonic() + (adopt_after_s or 0)
        # the one job loop, stopped by ``stop`` alone: the relay outlives the consumers and
        # jobs of a stopping worker, so it publishes what their last transactions wrote
        self.loop = JobLoop("outbox-relay", self._tick, poll_interval_s, asyncio.Event())
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Something was committed to the outbox: publish now rather than at the next poll."""
        self.loop.wake()

    def start(self) -> None:
        self._task = asyncio.create_task(self.loop.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Let the round in flight finish (its rows published and deleted in one go) and
        stop; a round still running after ``STOP_GRACE_S`` (the broker away, say) is
        cancelled — its rows, maybe on the wire already, are published again later
        (at-least-once). Cancelling at once republished every stop's last round."""
        task, self._task = self._task, None
        if task is not None:
            self.loop.stopping.set()
            self.loop.wake()
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.publisher.stop()

    async def _tick(self) -> bool:
        """One batch of this worker's rows (and, when due, the rows of stopped workers);
        transient failures (broker or database down) retried with backoff. True when a full
        batch went out: more is probably waiting."""
        published = await retrying(
            self._round,
            initial_s=RETRY_INITIAL_S,
            max_s=self.retry_max_s,
            stopping=self.loop.stopping,
        )
        return published >= self.batch

    async def _round(self) -> int:
        published = await self.publish_once()
        if self.adopt_after_s is not None and time.monotonic() >= self._next_adoption:
            await self.adopt_once()
            self._next_adoption = time.monotonic() + self.adopt_after_s
        return published

    async def publish_once(self, relay: str | None = None) -> int:
        """Publish one batch of the pending rows of ``relay`` (default: this worker's); return
        how many (0 when that worker's relay is active elsewhere)."""
        async with self.sessions() as session, session.begin():
            if not await outbox.try_lock_relay(session, relay):
                return 0
            rows = await outbox.pending(session, self.batch, relay)
            if not rows:
                return 0
            # every row acknowledged (acks=all) before the delete
            await self.publisher.publish([Record(r.topic, r.key, r.value, r.headers) for r in rows])
            await outbox.remove(session, [row.id for row in rows])
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)

    async def adopt_once(self) -> int:
        """Publish the rows of other workers whose oldest row waited ``adopt_after_s``: their
        worker stopped (or is far behind). Each under that worker's relay lock, one batch at
        a time in id order, so its rows keep their order whoever publishes them."""
        assert self.adopt_after_s is not None
        async with self.sessions() as session:
            relays = await outbox.stale_relays(session, timedelta(seconds=self.adopt_after_s))
        total = 0
        for relay in relays:
            published = 0
            while n := await self.publish_once(relay):
                published += n
                if n < self.batch:
                    break
            if published:
                log.warning(
                    "published outbox rows of a worker that is not running or far behind",
                    worker=relay,
                    rows=published,
                )
            total += published
        return total

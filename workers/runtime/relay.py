"""The outbox relay: publishes committed outbox rows with acks=all, then deletes them.

Every worker process runs one; a PostgreSQL advisory lock lets exactly one publish at a
time (the others are hot standbys), which keeps rows in commit order per key.
At-least-once on the wire: a crash after publishing and before deleting republishes,
and every consumer dedupes by message id.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from storage import outbox
from workers.runtime import metrics
from workers.runtime.publisher import Record, RecordPublisher
from workers.runtime.transient import is_transient

log = structlog.get_logger("billstream.relay")


class OutboxRelay:
    def __init__(
        self,
        publisher: RecordPublisher,
        sessions: async_sessionmaker[AsyncSession],
        *,
        poll_interval_s: float,
        batch: int,
        retry_max_s: float = 30.0,
    ) -> None:
        self.publisher = publisher
        self.sessions = sessions
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.retry_max_s = retry_max_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Something was committed to the outbox: publish now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.publisher.stop()

    async def _run(self) -> None:
        while True:
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_transient),
                    wait=wait_exponential_jitter(multiplier=0.2, jitter=0.2, max=self.retry_max_s),
                    reraise=True,
                ):
                    with attempt:
                        published = await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                published = 0
                await asyncio.sleep(1)
            if published >= self.batch:
                continue  # more waiting: go again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()

    async def publish_once(self) -> int:
        """Publish one batch of pending rows; return how many (0 when another relay is active)."""
        async with self.sessions() as session, session.begin():
            if not await outbox.try_lock_relay(session):
                return 0
            rows = await outbox.pending(session, self.batch)
            if not rows:
                return 0
            # every row acknowledged (acks=all) before the delete
            await self.publisher.publish([Record(r.topic, r.key, r.value, r.headers) for r in rows])
            await outbox.remove(session, [row.id for row in rows])
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)

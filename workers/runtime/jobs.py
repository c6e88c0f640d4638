"""Jobs: periodic and background steps (billing runs, collection, sweeps, webhook dispatch
and recording) on the same machinery as the consumers (ARCHITECTURE.md §4.6 and 4.7, ADR 0044).

A step is one ``Tx``: its effects, the outbox rows of the events it emits and its
after-commit wake-ups commit together; transient failures (database or broker unavailable)
are retried with backoff and jitter, never dropped.

Bulkheads: a step that fails *permanently* on a set of items is not retried as a whole
forever. Like a consumer batch with a poison message, it is split in halves, each half in a
transaction of its own, until the one item that fails is alone; that item is quarantined
(``storage.quarantine``: a row with its reason, an ``ops.quarantined`` event that the alerts
worker turns into an operational alert for its tenant, an error log line and a metric) and
every other item is processed. Claim queries leave quarantined items out until an operator
releases them (``billstream quarantine release``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from prometheus_client import Counter

from schemas import topics
from schemas.envelope import new_id
from schemas.ops import OpsQuarantined, QuarantinedData
from storage.db import Sessions
from storage.quarantine import Entry, QuarantineRepository
from workers.runtime.errors import ShuttingDown, describe
from workers.runtime.transient import retrying
from workers.runtime.tx import Tx

log = structlog.get_logger("billstream.jobs")

T = TypeVar("T")
R = TypeVar("R")

QUARANTINED = Counter(
    "billstream_job_items_quarantined_total",
    "Job items isolated after a permanent failure",
    ["job"],
)
JOB_RETRIES = Counter(
    "billstream_job_transient_retries_total", "Job steps retried after a transient error", ["job"]
)
JOB_FAILURES = Counter(
    "billstream_job_step_failures_total",
    "Job steps that failed with no item to blame (retried at the next tick)",
    ["job"],
)


@dataclass(frozen=True)
class Item:
    """What a job works on, as far as quarantine is concerned."""

    tenant_id: str
    kind: str  # subscription, invoice, billing_run, webhook_message, webhook_endpoint, …
    id: str


@dataclass(frozen=True)
class Step:
    """What one claimed chunk did: how many items it claimed (0: nothing was due) and the
    sum of what ``apply`` returned for the parts that committed."""

    claimed: int
    applied: int


Apply = Callable[[Tx, Sequence[T]], Awaitable[int]]
Claim = Callable[[Tx, Sequence[Item] | None], Awaitable[Sequence[T]]]
# Called in the quarantining transaction: the job records the item's own state (a billing
# run marked failed with the reason, …).
Mark = Callable[[Tx, Item, str], Awaitable[None]]


class Jobs:
    """Runs job steps for one worker. ``stopping`` set: a retrying step gives up
    (``ShuttingDown``) and its transaction rolls back; it is done again after a restart."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        retry_initial_s: float,
        retry_max_s: float,
        on_committed: Callable[[], None] = lambda: None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.sessions = sessions
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.on_committed = on_committed
        self.stopping = stopping or asyncio.Event()

    def until(self, stopping: asyncio.Event) -> Jobs:
        """The same jobs, giving up when ``stopping`` is set rather than when the worker
        stops: for what a job's ``close`` still writes while the worker stops (webhook
        outcomes of the deliveries in flight), bounded by the stop's own timeout."""
        return Jobs(
            self.sessions,
            retry_initial_s=self.retry_initial_s,
            retry_max_s=self.retry_max_s,
            on_committed=self.on_committed,
            stopping=stopping,
        )

    @contextlib.asynccontextmanager
    async def transaction(self, job: str) -> AsyncIterator[Tx]:
        """One ``Tx``, one attempt, no retry: for a caller that answers a failure itself (the
        ingress says 503, the CLI says what went wrong). Commits, with its outbox rows and
        command outcomes, when the block ends; rolls back if it raises."""
        async with self.sessions() as session, session.begin():
            tx = Tx(session, job)
            yield tx
            await tx.flush()
        if tx.outgoing:
            self.on_committed()

    async def run(self, job: str, step: Callable[[Tx], Awaitable[R]]) -> R:
        """``step`` in one transaction (with its outbox rows); transient failures retried."""

        async def attempt() -> R:
            async with self.sessions() as session, session.begin():
                tx = Tx(session, job)
                result = await step(tx)
                await tx.flush()
            if tx.outgoing:
                self.on_committed()
            return result

        def on_retry(attempt: int, error: BaseException) -> None:
            JOB_RETRIES.labels(job=job).inc()
            log.warning(
                "transient failure, retrying", job=job, attempt=attempt, error=describe(error)
            )

        return await retrying(
            attempt,
            initial_s=self.retry_initial_s,
            max_s=self.retry_max_s,
            stopping=self.stopping,
            on_retry=on_retry,
        )

    async def isolated(
        self,
        job: str,
        items: Sequence[T],
        item_of: Callable[[T], Item],
        apply: Apply[T],
        *,
        mark: Mark | None = None,
    ) -> int:
        """``apply(tx, items)`` in one transaction; if it fails permanently, in halves until
        the failing item is alone and quarantined. Returns the sum of what ``apply`` returned
        for the parts that committed."""
        if not items:
            return 0
        try:
            return await self.run(job, lambda tx: apply(tx, items))
        except ShuttingDown:
            raise
        except Exception as e:
            return await self._split(job, items, item_of, apply, e, mark)

    async def claimed(
        self,
        job: str,
        claim: Claim[T],
        item_of: Callable[[T], Item],
        apply: Apply[T],
        *,
        mark: Mark | None = None,
    ) -> Step:
        """One chunk of claimed work: ``claim(tx, None)`` locks the next items (leaving out
        quarantined ones) and ``apply`` processes them, in one transaction. On a permanent
        failure the same items are claimed again by id (``claim(tx, items)``: those still
        due) in halves until the one that fails is quarantined. Call it until it claims
        nothing."""
        claimed: list[Item] = []

        async def step(tx: Tx) -> int:
            found = await claim(tx, None)
            claimed[:] = [item_of(x) for x in found]
            return await apply(tx, found) if found else 0

        async def again(tx: Tx, only: Sequence[Item]) -> int:
            found = await claim(tx, only)
            return await apply(tx, found) if found else 0

        try:
            applied = await self.run(job, step)
        except ShuttingDown:
            raise
        except Exception as e:
            if not claimed:  # the claim itself failed: no item to blame
                raise
            log.warning("job step failed; isolating the item", job=job, error=describe(e))
            applied = await self._split(job, list(claimed), lambda i: i, again, e, mark)
        return Step(len(claimed), applied)

    async def _split(
        self,
        job: str,
        items: Sequence[T],
        item_of: Callable[[T], Item],
        apply: Apply[T],
        error: Exception,
        mark: Mark | None,
    ) -> int:
        if len(items) == 1:
            await self.quarantine(job, item_of(items[0]), error, mark)
            return 0
        mid = len(items) // 2
        first = await self.isolated(job, items[:mid], item_of, apply, mark=mark)
        return first + await self.isolated(job, items[mid:], item_of, apply, mark=mark)

    async def quarantine(
        self, job: str, item: Item, error: BaseException, mark: Mark | None = None
    ) -> None:
        """Set ``item`` aside with the reason ``error`` gives, and tell its tenant."""
        now = datetime.now(UTC)
        entry = Entry(
            new_id(), item.tenant_id, job, item.kind, item.id, describe(error),
            type(error).__name__, now,
        )  # fmt: skip

        async def record(tx: Tx) -> bool:
            if not await QuarantineRepository(tx.session).add(entry):
                return False
            if mark is not None:
                await mark(tx, item, entry.reason)
            data = QuarantinedData(
                quarantine_id=entry.id,
                job=job,
                kind=item.kind,
                item_id=item.id,
                reason=entry.reason,
                error=entry.error,
                quarantined_at=now,
            )
            event = OpsQuarantined(
                source=f"billstream/{job.split('.')[0]}",
                tenantid=item.tenant_id,
                subject=f"{item.kind}/{item.id}"[:256],
                data=data,
            )
            tx.emit(event, topic=topics.EVENTS_OPS, key=item.tenant_id)
            return True

        if await self.run(job, record):
            QUARANTINED.labels(job=job).inc()
            log.error(
                "job item quarantined",
                job=job,
                tenantid=item.tenant_id,
                kind=item.kind,
                item_id=item.id,
                quarantine_id=entry.id,
                reason=entry.reason,
                exc_info=error,
            )


Tick = Callable[[], Awaitable[bool]]


@dataclass
class JobLoop:
    """The one loop every periodic or background job runs in (``Runtime.job``).

    ``tick`` does one step of work (each of its writes a ``Jobs.run``/``claimed``
    transaction) and returns True when more is probably due at once; otherwise the loop
    waits ``every_s`` seconds or until ``wake()`` (something was committed that the job
    works on). A tick that fails with no item to blame (its claim query, say) is logged and
    counted, and the next tick tries again. When the worker stops, the loop finishes the
    tick in progress (a retrying one gives up), runs ``close`` and ends: its transaction
    either committed or rolled back, and it is done again after a restart."""

    name: str
    tick: Tick
    every_s: float
    stopping: asyncio.Event
    close: Callable[[], Awaitable[None]] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._wake.clear()
                try:
                    more = await self.tick()
                except ShuttingDown:
                    return
                except Exception as e:
                    JOB_FAILURES.labels(job=self.name).inc()
                    log.warning(
                        "job tick failed; the next tick retries",
                        job=self.name,
                        error=describe(e),
                        exc_info=True,
                    )
                    more = False
                if more:
                    await asyncio.sleep(0)  # let the consumers and the other jobs in
                elif not self.stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.every_s)
        finally:
            if self.close is not None:
                await self.close()

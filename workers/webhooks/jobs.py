"""The dispatch job: claims due messages, delivers them concurrently, records outcomes.

Two job loops of the runtime (``Runtime.job``) and the deliveries between them:

- the claim loop (``webhooks.deliver``) leases due messages (``FOR UPDATE SKIP LOCKED``,
  one short transaction) while fewer than ``concurrency`` deliveries are in flight; it runs
  when woken (the fan-out committed new messages, an outcome freed a slot or unblocked an
  ordered endpoint) and every ``webhook_poll_interval_s`` (retries falling due, other
  replicas' messages);
- one task per leased message makes the HTTP attempt (or defers it, rate limit);
- the record loop (``webhooks.record``), woken as outcomes are ready, writes finished
  attempts in batches: attempt rows, message states (only under the lease that sent
  them), endpoint health, and events through the outbox (``tx.emit``).

A crash anywhere loses nothing: a leased message whose outcome was never recorded is due
again when its lease expires, and is sent again with the same ``webhook-id``.

Bulkheads (ARCHITECTURE.md §4.7): claiming and recording are steps of the runtime's jobs
(``workers.runtime.jobs``: one ``Tx`` each, transient failures retried, never dropping an
outcome). A batch of outcomes that fails permanently is split down to the one message whose
outcome cannot be recorded; that message is quarantined (job ``webhooks.record``) with an
operational alert for its tenant, and every other outcome is recorded. A message whose
delivery crashes the worker is quarantined too (job ``webhooks.deliver``). The claim leaves
quarantined messages out, so such a message is neither sent again nor holding a delivery
slot until an operator releases it. Outcomes of an endpoint or message deleted meanwhile
are not failures: storage drops them.

Stopping: the claim loop stops with the worker; the record loop's ``close`` lets the
deliveries in flight finish (up to the graceful timeout) and records them. What is still
unrecorded then is sent again after its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter, Gauge, Histogram

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.topics import partition_key
from storage.webhooks import DELIVER_JOB, RECORD_JOB, WebhookRepository
from workers.runtime import Item, Runtime, Tx, metrics
from workers.runtime.jobs import JobLoop
from workers.runtime.ratelimit import TokenBuckets
from workers.webhooks import service
from workers.webhooks.delivery import Deliverer
from workers.webhooks.domain import (
    AttemptResult,
    Claimed,
    Clock,
    MessageUpdate,
    Outcome,
    RetryPolicy,
)

log = structlog.get_logger("billstream.webhooks")

LATENCY = Histogram(
    "billstream_webhook_attempt_seconds",
    "Time from sending a webhook to its answer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
IN_FLIGHT = Gauge("billstream_webhook_in_flight", "Webhook messages leased and not recorded")
MESSAGES_FAILED = Counter(
    "billstream_webhook_messages_failed_total", "Messages whose retry schedule was exhausted"
)
ENDPOINTS_DISABLED = Counter(
    "billstream_webhook_endpoints_disabled_total", "Endpoints disabled automatically", ["reason"]
)

RECORD_BATCH = 1_000
RECORD_EVERY_S = 1.0  # the record loop also looks every second (a failed batch is retried)


@dataclass(frozen=True)
class Attempted:
    """A delivery that finished: its attempt's result, or deferred by the rate limit."""

    claimed: Claimed
    result: AttemptResult | None  # None: deferred by the rate limit until ``until``
    until_s: float = 0.0


def message_item(claimed: Claimed) -> Item:
    """What is quarantined when one message cannot be delivered or recorded."""
    return Item(claimed.tenant_id, "webhook_message", claimed.id)


# --- the steps: each a function of one Tx ---------------------------------------------


async def claim(tx: Tx, now: datetime, limit: int, lease: timedelta) -> list[Claimed]:
    """Lease up to ``limit`` due messages (none that is quarantined)."""
    return await tx.repo(WebhookRepository).claim_due(now, limit, now + lease)


async def record(
    tx: Tx, batch: Sequence[Attempted], policy: RetryPolicy, rng: random.Random, now: datetime
) -> int:
    """Record a batch of finished deliveries: message states, attempts, endpoint health and
    the events they cause. Returns the messages updated."""
    outcomes: list[Outcome] = []
    updates: list[MessageUpdate] = []
    for d in batch:
        if d.result is None:
            updates.append(service.deferred(d.claimed, now + timedelta(seconds=d.until_s)))
        else:
            o = service.outcome(d.claimed, d.result, policy, rng)
            outcomes.append(o)
            updates.append(o.update)
    health = service.health(outcomes, policy, now)
    events: list[CloudEvent] = []
    repo = tx.repo(WebhookRepository)
    applied = await repo.record(
        updates,
        [o.attempt for o in outcomes],
        {(d.claimed.tenant_id, d.claimed.endpoint_id) for d in batch},
    )
    await repo.health(health.recovered, health.failing)
    disabled: list[tuple[str, str, str]] = []
    for reason, keys in (("gone", health.gone), ("failing", health.to_disable)):
        for tenant_id, endpoint_id, since in await repo.disable(keys, reason, now):
            disabled.append((tenant_id, endpoint_id, reason))
            events.append(
                service.endpoint_disabled(
                    tenant_id, endpoint_id, "gone" if reason == "gone" else "failing", since
                )
            )
    failed = 0
    for o in outcomes:
        if o.finally_failed and (o.claimed.tenant_id, o.claimed.id) in applied:
            failed += 1
            event = service.message_failed(o)
            if event is not None:
                events.append(event)
    for e in events:
        tx.emit(e, topic=topics.EVENTS_WEBHOOKS, key=partition_key(e.tenantid, e.subject or ""))

    def committed() -> None:  # counted once, not per attempt of a retried transaction
        for tenant_id, endpoint_id, reason in disabled:
            ENDPOINTS_DISABLED.labels(reason=reason).inc()
            log.warning(
                "webhook endpoint disabled",
                tenantid=tenant_id,
                endpoint_id=endpoint_id,
                reason=reason,
            )
        MESSAGES_FAILED.inc(failed)
        for o in outcomes:
            metrics.WEBHOOK_DELIVERIES.labels(
                outcome="succeeded" if o.result.succeeded else "failed"
            ).inc()

    tx.after_commit(committed)
    return len(applied)


# --- the loops ------------------------------------------------------------------------


class Dispatcher:
    """The deliveries in flight between the claim loop and the record loop of one worker.

    Claims go through ``runtime.jobs``: they give up when the worker stops. Recording (and
    quarantining a crashed delivery) goes through a ``Jobs`` of the same runtime (its
    sessions, retries, metrics and relay wake-up) that stays open until the record loop's
    ``close`` has recorded the last deliveries: ``runtime.jobs`` refuses new work once the
    worker is stopping, and the outcomes of deliveries finishing then must still be kept."""

    def __init__(
        self,
        runtime: Runtime,
        deliverer: Deliverer,
        policy: RetryPolicy,
        *,
        clock: Clock,
        rng: random.Random,
        concurrency: int,
        claim_batch: int,
        poll_interval_s: float,
        lease: timedelta,
        grace_s: float,
    ) -> None:
        self.claims = runtime.jobs
        self.closing = asyncio.Event()  # set once ``close`` is done: recording gives up
        self.jobs = runtime.jobs.until(self.closing)
        self.deliverer = deliverer
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.claim_batch = claim_batch
        self.lease = lease
        self.grace_s = grace_s
        self.limiter: TokenBuckets[tuple[str, str]] = TokenBuckets()
        self.in_flight = 0
        self.passes = 0  # claim passes made (tests wait on it instead of sleeping)
        self._attempted: list[Attempted] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._claim_idle = asyncio.Event()
        self._claim_idle.set()
        self._stopping = False
        self.claimer: JobLoop = runtime.job(DELIVER_JOB, self.claim_tick, every_s=poll_interval_s)
        self.recorder: JobLoop = runtime.job(
            RECORD_JOB, self.record_tick, every_s=RECORD_EVERY_S, close=self.close
        )

    def wake(self) -> None:
        """New or newly due messages were committed: look for them now."""
        self.claimer.wake()

    # --- claiming ------------------------------------------------------------------

    async def claim_tick(self) -> bool:
        """One claim pass while slots are free; True when it filled its limit (probably
        more is due at once)."""
        free = self.concurrency - self.in_flight
        if free <= 0:
            return False
        limit = min(free, self.claim_batch)
        self._claim_idle.clear()
        try:
            return await self.claim_once(limit) == limit
        finally:
            self._claim_idle.set()

    async def claim_once(self, limit: int) -> int:
        """Lease up to ``limit`` due messages (none that is quarantined) and start
        delivering them; return how many."""
        now = self.clock()
        batch = await self.claims.run(DELIVER_JOB, lambda tx: claim(tx, now, limit, self.lease))
        for message in batch:
            self.in_flight += 1
            task = asyncio.create_task(self._deliver(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        IN_FLIGHT.set(self.in_flight)
        self.passes += 1
        return len(batch)

    async def _deliver(self, message: Claimed) -> None:
        try:
            wait = self.limiter.take(
                (message.tenant_id, message.endpoint_id),
                1,
                message.rate_limit_per_s,
                time.monotonic(),
            )
            if wait > 0:
                self._finish(Attempted(message, None, until_s=wait))
                return
            result = await self.deliverer.deliver(message)
        except asyncio.CancelledError:
            self._finish(None)  # stopping: the lease expires and it is sent again
            raise
        except Exception as e:  # a bug met by this message's data: set it aside
            log.exception("webhook delivery crashed", message_id=message.id)
            try:
                await self.jobs.quarantine(DELIVER_JOB, message_item(message), e)
            except Exception:  # not even that: its lease expires and it is tried again
                log.exception("quarantining a webhook message failed", message_id=message.id)
            finally:
                self._finish(None)
            return
        LATENCY.observe(result.latency_ms / 1000)
        self._finish(Attempted(message, result))

    def _finish(self, attempted: Attempted | None) -> None:
        if attempted is None:
            self.in_flight -= 1
            IN_FLIGHT.set(self.in_flight)
            self.claimer.wake()
            return
        self._attempted.append(attempted)
        self.recorder.wake()

    # --- recording -----------------------------------------------------------------

    async def record_tick(self) -> bool:
        """Record every finished delivery, in batches."""
        while self._attempted:
            batch = self._attempted[:RECORD_BATCH]
            await self.record(batch)
            del self._attempted[: len(batch)]
            self.in_flight -= len(batch)
            IN_FLIGHT.set(self.in_flight)
            if not self._stopping:
                self.claimer.wake()  # slots are free, ordered endpoints may have a next one
        return False

    async def record(self, batch: Sequence[Attempted]) -> int:
        """Record a batch of outcomes in one transaction (transient failures retried); an
        outcome that fails permanently is isolated and quarantined, the others recorded.
        Returns the messages updated."""
        return await self.jobs.isolated(
            RECORD_JOB,
            batch,
            lambda d: message_item(d.claimed),
            lambda tx, part: record(tx, part, self.policy, self.rng, self.clock()),
        )

    # --- stopping ------------------------------------------------------------------

    async def close(self) -> None:
        """The record loop's close (the worker stops; the claim loop stops with it): the
        deliveries in flight finish and are recorded, within the graceful timeout (the
        worker's bound on finishing its jobs; a reserve of it is kept for recording). What
        is still unrecorded then is sent again after its lease expires."""
        self._stopping = True
        reserve = min(1.0, self.grace_s / 5)
        deadline = asyncio.get_running_loop().time() + self.grace_s - reserve

        def left() -> float:
            return max(0.0, deadline - asyncio.get_running_loop().time())

        try:
            # a claim in progress starts its deliveries first (a retrying one gives up)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_idle.wait(), left())
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=left())
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            try:
                await asyncio.wait_for(self.record_tick(), timeout=reserve)
            except Exception as e:  # overran or failed: sent again after the lease
                log.warning(
                    "webhook outcomes left unrecorded at stop",
                    count=len(self._attempted),
                    error=repr(e),
                )
        finally:
            self.closing.set()
            for task in list(self._tasks):
                task.cancel()
            await self.deliverer.close()

"""The dispatcher: claims due messages, delivers them concurrently, records outcomes.

Three cooperating parts inside the webhooks worker process:

- the claimer leases due messages (``FOR UPDATE SKIP LOCKED``, one short transaction)
  while fewer than ``concurrency`` deliveries are in flight; it runs when woken (the
  fan-out committed new messages, an outcome freed a slot or unblocked an ordered
  endpoint) and every ``poll_interval_s`` (retries falling due, other replicas' messages);
- one task per leased message makes the HTTP attempt (or defers it, rate limit);
- the recorder writes finished attempts in batches: attempt rows, message states (only
  under the lease that sent them), endpoint health, and events through the outbox.

A crash anywhere loses nothing: a leased message whose outcome was never recorded is due
again when its lease expires, and is sent again with the same ``webhook-id``.

Bulkheads (ARCHITECTURE.md §4.7): claiming and recording are steps of the runtime's jobs
(``workers.runtime.jobs``: one ``Tx`` each, transient failures retried forever, never
dropping an outcome). A batch of outcomes that fails permanently is split down to the one
message whose outcome cannot be recorded; that message is quarantined (job
``webhooks.record``) with an operational alert for its tenant, and every other outcome is
recorded. A message whose delivery crashes the worker is quarantined too (job
``webhooks.deliver``). The claim leaves quarantined messages out, so such a message is
neither sent again nor holding a delivery slot until an operator releases it. Outcomes of
an endpoint or message deleted meanwhile are not failures: storage drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from prometheus_client import Counter, Gauge, Histogram

from schemas import topics
from schemas.envelope import CloudEvent
from storage.webhooks import DELIVER_JOB, RECORD_JOB, Claimed, MessageUpdate, WebhookRepository
from workers.runtime import metrics
from workers.runtime.errors import ShuttingDown
from workers.runtime.jobs import Item, Jobs
from workers.runtime.ratelimit import TokenBuckets
from workers.runtime.tx import Tx
from workers.webhooks import service
from workers.webhooks.delivery import Deliverer
from workers.webhooks.service import AttemptResult, Clock, Outcome, RetryPolicy

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


@dataclass(frozen=True)
class Done:
    claimed: Claimed
    result: AttemptResult | None  # None: deferred by the rate limit until ``until``
    until_s: float = 0.0


def message_item(claimed: Claimed) -> Item:
    """What is quarantined when one message cannot be delivered or recorded."""
    return Item(claimed.tenant_id, "webhook_message", claimed.id)


class Dispatcher:
    def __init__(
        self,
        jobs: Jobs,
        deliverer: Deliverer,
        policy: RetryPolicy,
        *,
        clock: Clock,
        rng: random.Random,
        concurrency: int,
        claim_batch: int,
        poll_interval_s: float,
        lease: timedelta,
    ) -> None:
        self.jobs = jobs
        self.deliverer = deliverer
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.claim_batch = claim_batch
        self.poll_interval_s = poll_interval_s
        self.lease = lease
        self.limiter: TokenBuckets[tuple[str, str]] = TokenBuckets()
        self.in_flight = 0
        self.passes = 0  # claim passes made (tests wait on it instead of sleeping)
        self._wake = asyncio.Event()
        self._recorded = asyncio.Event()
        self._done: list[Done] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------

    def wake(self) -> None:
        """New or newly due messages were committed: look for them now."""
        self._wake.set()

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="webhooks-claimer"),
            asyncio.create_task(self._record_loop(), name="webhooks-recorder"),
        ]

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let deliveries in flight finish (up to ``grace_s``) and record
        them. What is still unrecorded then is sent again after its lease expires."""
        self._stopping = True
        claimer = self._loops[0] if self._loops else None
        if claimer is not None:
            claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claimer
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_all(), timeout=grace_s)
        for task in self._loops[1:]:
            task.cancel()
        await asyncio.gather(*self._loops[1:], return_exceptions=True)
        self._loops = []

    # --- claiming ------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            claimed = 0
            free = self.concurrency - self.in_flight
            if free > 0:
                try:
                    claimed = await self.claim_once(min(free, self.claim_batch))
                except ShuttingDown:
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:  # one statement for everyone: no item to blame
                    log.exception("claiming webhook messages failed; retrying")
            if claimed and claimed == min(free, self.claim_batch):
                continue  # probably more due: go again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def claim_once(self, limit: int) -> int:
        """Lease up to ``limit`` due messages (none that is quarantined) and start
        delivering them; return how many."""
        now = self.clock()

        async def claim(tx: Tx) -> list[Claimed]:
            return await tx.repo(WebhookRepository).claim_due(now, limit, now + self.lease)

        batch = await self.jobs.run(DELIVER_JOB, claim)
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
                self._finish(Done(message, None, until_s=wait))
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
        self._finish(Done(message, result))

    def _finish(self, done: Done | None) -> None:
        if done is None:
            self.in_flight -= 1
            IN_FLIGHT.set(self.in_flight)
            self._wake.set()
            return
        self._done.append(done)
        self._recorded.set()

    # --- recording -----------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            await self._recorded.wait()
            self._recorded.clear()
            try:
                await self._flush_all()
            except ShuttingDown:
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording webhook outcomes failed; retrying")
                await asyncio.sleep(1)
                self._recorded.set()

    async def _flush_all(self) -> None:
        while self._done:
            batch = self._done[:RECORD_BATCH]
            await self.record(batch)
            del self._done[: len(batch)]
            self.in_flight -= len(batch)
            IN_FLIGHT.set(self.in_flight)
            if not self._stopping:
                self._wake.set()  # slots are free, ordered endpoints may have a next message

    async def record(self, batch: Sequence[Done]) -> int:
        """Record a batch of outcomes in one transaction (transient failures retried); an
        outcome that fails permanently is isolated and quarantined, the others recorded.
        Returns the messages updated."""
        return await self.jobs.isolated(
            RECORD_JOB, batch, lambda d: message_item(d.claimed), self._record
        )

    async def _record(self, tx: Tx, batch: Sequence[Done]) -> int:
        now = self.clock()
        outcomes: list[Outcome] = []
        updates: list[MessageUpdate] = []
        for d in batch:
            if d.result is None:
                updates.append(service.deferred(d.claimed, now + timedelta(seconds=d.until_s)))
            else:
                o = service.outcome(d.claimed, d.result, self.policy, self.rng)
                outcomes.append(o)
                updates.append(o.update)
        health = service.health(outcomes, self.policy, now)
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
            tx.emit(
                e, topic=topics.EVENTS_WEBHOOKS, key=service.event_key(e.tenantid, e.subject or "")
            )

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

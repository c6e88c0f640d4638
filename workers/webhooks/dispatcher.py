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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from prometheus_client import Counter, Gauge, Histogram
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from schemas import topics
from schemas.envelope import CloudEvent
from storage import outbox
from storage.db import Sessions
from storage.webhooks import Claimed, MessageUpdate, WebhookRepository
from workers.runtime import metrics
from workers.runtime.transient import is_transient
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


class Dispatcher:
    def __init__(
        self,
        sessions: Sessions,
        deliverer: Deliverer,
        policy: RetryPolicy,
        *,
        clock: Clock,
        rng: random.Random,
        concurrency: int,
        claim_batch: int,
        poll_interval_s: float,
        lease: timedelta,
        on_outbox: Callable[[], None] = lambda: None,
        retry_max_s: float = 30.0,
    ) -> None:
        self.sessions = sessions
        self.deliverer = deliverer
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.concurrency = concurrency
        self.claim_batch = claim_batch
        self.poll_interval_s = poll_interval_s
        self.lease = lease
        self.on_outbox = on_outbox
        self.retry_max_s = retry_max_s
        self.limiter = service.RateLimiter()
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
                    limit = min(free, self.claim_batch)
                    claimed = await self._retrying(functools.partial(self.claim_once, limit))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("claiming webhook messages failed; retrying")
            if claimed and claimed == min(free, self.claim_batch):
                continue  # probably more due: go again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def claim_once(self, limit: int) -> int:
        """Lease up to ``limit`` due messages and start delivering them; return how many."""
        now = self.clock()
        async with self.sessions() as session, session.begin():
            batch = await WebhookRepository(session).claim_due(now, limit, now + self.lease)
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
        except Exception:
            log.exception("webhook delivery crashed", message_id=message.id)
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
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording webhook outcomes failed; retrying")
                await asyncio.sleep(1)
                self._recorded.set()

    async def _flush_all(self) -> None:
        while self._done:
            batch = self._done[:RECORD_BATCH]
            await self._retrying(functools.partial(self.record, batch))
            del self._done[: len(batch)]
            self.in_flight -= len(batch)
            IN_FLIGHT.set(self.in_flight)
            if not self._stopping:
                self._wake.set()  # slots are free, ordered endpoints may have a next message

    async def record(self, batch: list[Done]) -> int:
        """Write one batch of outcomes in one transaction; return the messages updated."""
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
        async with self.sessions() as session, session.begin():
            repo = WebhookRepository(session)
            applied = await repo.record(
                updates,
                [o.attempt for o in outcomes],
                {(d.claimed.tenant_id, d.claimed.endpoint_id) for d in batch},
            )
            await repo.health(health.recovered, health.failing)
            for reason, keys in (("gone", health.gone), ("failing", health.to_disable)):
                for tenant_id, endpoint_id, since in await repo.disable(keys, reason, now):
                    ENDPOINTS_DISABLED.labels(reason=reason).inc()
                    log.warning(
                        "webhook endpoint disabled",
                        tenantid=tenant_id,
                        endpoint_id=endpoint_id,
                        reason=reason,
                    )
                    events.append(
                        service.endpoint_disabled(
                            tenant_id,
                            endpoint_id,
                            "gone" if reason == "gone" else "failing",
                            since,
                        )
                    )
            for o in outcomes:
                if o.finally_failed and (o.claimed.tenant_id, o.claimed.id) in applied:
                    MESSAGES_FAILED.inc()
                    failed = service.message_failed(o)
                    if failed is not None:
                        events.append(failed)
            await outbox.add(
                session,
                [
                    outbox.OutgoingMessage(
                        topics.EVENTS_WEBHOOKS,
                        service.event_key(e.tenantid, e.subject or "").encode(),
                        e.to_json(),
                        {"ce_type": e.type},
                    )
                    for e in events
                ],
            )
        for o in outcomes:
            metrics.WEBHOOK_DELIVERIES.labels(
                outcome="succeeded" if o.result.succeeded else "failed"
            ).inc()
        if events:
            self.on_outbox()
        return len(applied)

    async def _retrying(self, attempt: Callable[[], Awaitable[int]]) -> int:
        async for state in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(multiplier=0.1, jitter=0.1, max=self.retry_max_s),
            reraise=True,
        ):
            with state:
                return await attempt()
        raise AssertionError("unreachable")

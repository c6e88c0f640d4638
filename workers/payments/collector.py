"""The collector: a background loop on every payments replica.

Each step: (1) one short transaction claims due collections (``FOR UPDATE SKIP LOCKED``),
writes the attempt's payment row (``creating``) and leases the collection; (2) Stripe is
called with no transaction open; (3) a second transaction records the outcome and emits
``payment.succeeded`` / ``payment.failed`` / ``payment.dunning_exhausted`` through the
outbox. A worker killed between (2) and (3) leaves a lease that runs out; the next claim
of that collection finds the attempt's PaymentIntent in Stripe (its metadata names the
invoice and attempt) before it would create one, so an invoice is never charged twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from schemas import topics
from schemas.envelope import new_id
from schemas.payments import (
    DunningData,
    DunningExhausted,
    PaymentData,
    PaymentFailed,
    PaymentFailureData,
    PaymentSucceeded,
)
from storage.db import Sessions
from storage.outbox import OutgoingMessage
from storage.payments import (
    Collection,
    Payment,
    PaymentsRepository,
    StripeAccount,
    StripeCustomer,
)
from workers.payments import secrets, service
from workers.payments.errors import SecretsKeyMissing, SecretUnreadable
from workers.payments.gateway import Gateway
from workers.payments.operations import Operations
from workers.payments.service import AmountNotCollectable, Outcome
from workers.runtime.errors import ShuttingDown
from workers.runtime.jobs import Item, Jobs
from workers.runtime.transient import is_transient
from workers.runtime.tx import Tx, outgoing
from workers.settings import Settings

log = structlog.get_logger("billstream.payments")

Clock = Callable[[], datetime]

COLLECT = "payments.collect"  # the job of collection and dunning (quarantine kind "invoice")


def utcnow() -> datetime:
    return datetime.now(UTC)


def customer_key(tenant: str, customer: str) -> str:
    return f"{tenant}:{customer}"


@dataclass(frozen=True)
class Job:
    tenant_id: str
    invoice_id: str
    customer: str
    amount: int
    currency: str
    attempt: int
    payment_id: str
    resumed: bool  # a lease ran out: look the PaymentIntent up before creating one
    correlationid: str | None


class Collector:
    """Collection and dunning on the runtime's jobs (``runtime.jobs``): the claim and the
    record are job steps (one ``Tx`` each, transient failures retried); an invoice whose
    claim, attempt or record fails permanently (bad data, a bug: not a decline, which is a
    normal outcome, and not Stripe or the database being unavailable, which are retried) is
    quarantined (job ``payments.collect``, kind ``invoice``) and every other invoice is
    collected in the same tick."""

    def __init__(
        self,
        sessions: Sessions,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        on_emitted: Callable[[], None] = lambda: None,
        jobs: Jobs | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.on_emitted = on_emitted
        self.jobs = jobs or Jobs(
            sessions,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            on_committed=on_emitted,
        )
        self._gateways: dict[str, Gateway] = {}
        self.operations = Operations(sessions, settings, self.gateway, self.jobs)

    async def tick(self) -> bool:
        """One batch of due attempts and queued Stripe operations; True when it ran some."""
        return await self.step() > 0

    async def close(self) -> None:
        """Close the Stripe clients (the loop does when it stops)."""
        gateways, self._gateways = list(self._gateways.values()), {}
        await asyncio.gather(*(g.close() for g in gateways), return_exceptions=True)

    async def step(self) -> int:
        """Claim and run one batch of due attempts and queued Stripe operations; how many."""
        jobs = await self._claim()
        ops = await self.operations.claim(self.clock())
        if jobs:
            outcomes = await asyncio.gather(*(self._run(job) for job in jobs))
            done = [(job, o) for job, o in zip(jobs, outcomes, strict=True) if o is not None]
            await self._record(done)
        if ops:
            finished = await asyncio.gather(*(self.operations.run(op) for op in ops))
            if any(finished):
                self.on_emitted()
        return len(jobs) + len(ops)

    async def _claim(self) -> list[Job]:
        """One job step: claim due collections (not quarantined), write each attempt's
        payment row and lease the collection. The attempts of what committed."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.payments_attempt_lease_s)
        claimed: list[Job] = []

        async def claim(tx: Tx, only: Sequence[Item] | None) -> Sequence[Collection]:
            pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
            return await PaymentsRepository(tx.session).claim_collections(
                now, self.settings.payments_claim_batch, job=COLLECT, only=pairs
            )

        async def start(tx: Tx, collections: Sequence[Collection]) -> int:
            repo = PaymentsRepository(tx.session)
            started = [await _start_attempt(repo, c, now, lease) for c in collections]
            tx.after_commit(lambda: claimed.extend(started))
            return len(started)

        await self.jobs.claimed(COLLECT, claim, _invoice_item, start)
        return claimed

    def gateway(self, secret_key: str) -> Gateway:
        """The client of one Stripe account (kept; closed when the loop stops)."""
        gw = self._gateways.get(secret_key)
        if gw is None:
            gw = self._gateways[secret_key] = Gateway(secret_key, self.settings.stripe_api_base)
        return gw

    async def _run(self, job: Job) -> Outcome | None:
        """The attempt's outcome; None if it must wait: Stripe (or the database) unavailable,
        or the worker misconfigured (it resumes after its lease), or the invoice quarantined
        because its attempt failed permanently (its data, a bug)."""
        try:
            return await self._attempt(job)
        except (asyncio.CancelledError, ShuttingDown):
            raise
        except Exception as e:
            if is_transient(e):
                log.warning("Stripe unavailable; the attempt resumes after its lease", error=str(e))
            elif isinstance(e, SecretsKeyMissing) and not isinstance(e, SecretUnreadable):
                # the worker's configuration, no tenant's data: nothing to quarantine
                log.error("collection attempt failed; it resumes after its lease", error=str(e))
            else:
                # the lease is kept: once released, the attempt resumes by looking its
                # PaymentIntent up first, as after a crash, so it is never charged twice
                await self.jobs.quarantine(COLLECT, _item(job), e)
            return None

    async def _attempt(self, job: Job) -> Outcome:
        async def read(tx: Tx) -> tuple[StripeAccount | None, StripeCustomer | None]:
            repo = PaymentsRepository(tx.session)
            return await repo.account(job.tenant_id), await repo.customer(
                job.tenant_id, job.customer
            )

        account, mapping = await self.jobs.run(COLLECT, read)
        if account is None:
            return Outcome("failed", None, None, "stripe_not_configured", "no Stripe account")
        if mapping is None:
            return Outcome(
                "failed", None, None, "no_stripe_customer", "the customer is not synced to Stripe"
            )
        if mapping.payment_method_id is None:
            return Outcome(
                "failed", None, None, "no_payment_method", "the customer has no payment method"
            )
        try:
            amount = service.to_stripe_amount(job.amount, job.currency)
        except AmountNotCollectable as e:
            return Outcome("failed", None, None, "amount_not_collectable", str(e))
        gateway = self.gateway(secrets.decrypt(self.settings, account.secret_key))
        if job.resumed:
            found = await gateway.find_intent(job.tenant_id, job.invoice_id, job.attempt)
            if found is not None:
                log.info("resumed attempt found its PaymentIntent", invoice=job.invoice_id)
                return service.outcome_of_intent(found)
        return await gateway.charge(
            tenant=job.tenant_id,
            invoice_id=job.invoice_id,
            attempt=job.attempt,
            payment_id=job.payment_id,
            amount=amount,
            currency=job.currency,
            stripe_customer=mapping.stripe_customer_id,
            payment_method=mapping.payment_method_id,
        )

    async def _record(self, done: Sequence[tuple[Job, Outcome]]) -> None:
        """One job step for every outcome; one that cannot be recorded (its data, a bug) is
        quarantined and the others are recorded."""
        schedule = self.settings.dunning_schedule_days

        async def record(tx: Tx, outcomes: Sequence[tuple[Job, Outcome]]) -> int:
            now = self.clock()
            repo = PaymentsRepository(tx.session)
            for job, outcome in outcomes:
                tx.outgoing += await _record_outcome(repo, job, outcome, now, schedule)
            return len(outcomes)

        await self.jobs.isolated(COLLECT, done, lambda d: _item(d[0]), record)


def _item(job: Job) -> Item:
    return Item(job.tenant_id, "invoice", job.invoice_id)


def _invoice_item(c: Collection) -> Item:
    return Item(c.tenant_id, "invoice", c.invoice_id)


async def _start_attempt(
    repo: PaymentsRepository, c: Collection, now: datetime, lease: timedelta
) -> Job:
    """Lease ``c`` and write its attempt's payment row; a lease that ran out resumes the
    attempt it was taken for."""
    resumed = c.status == "in_flight"
    payment = await repo.attempt(c.tenant_id, c.invoice_id, c.attempts) if resumed else None
    if payment is None:  # a first attempt, a dunning retry (or a lease without its row)
        resumed = False
        c.attempts += 1
        payment = Payment(
            tenant_id=c.tenant_id,
            id=f"pay_{new_id()}",
            invoice_id=c.invoice_id,
            customer=c.customer,
            amount=c.amount,
            currency=c.currency,
            method="card",
            attempt=c.attempts,
            state="creating",
            amount_refunded=0,
            disputed=False,
        )
        repo.session.add(payment)
    c.status, c.next_attempt_at = "in_flight", now + lease
    return Job(
        c.tenant_id,
        c.invoice_id,
        c.customer,
        c.amount,
        c.currency,
        c.attempts,
        payment.id,
        resumed,
        c.correlationid,
    )


async def _record_outcome(
    repo: PaymentsRepository, job: Job, outcome: Outcome, now: datetime, schedule: list[float]
) -> list[OutgoingMessage]:
    """Apply what Stripe said, if the collection is still leased for this attempt."""
    c = await repo.collection(job.tenant_id, job.invoice_id, lock=True)
    payment = await repo.payment(job.tenant_id, job.payment_id, lock=True)
    if c is None or payment is None or c.status != "in_flight" or c.attempts != job.attempt:
        return []  # settled meanwhile (a webhook, an offline payment, another replica)
    payment.stripe_payment_intent = outcome.payment_intent or payment.stripe_payment_intent
    payment.stripe_charge = outcome.charge or payment.stripe_charge
    return settle(c, payment, outcome, now, schedule)


def settle(
    c: Collection,
    payment: Payment,
    outcome: Outcome,
    now: datetime,
    schedule_days: list[float],
) -> list[OutgoingMessage]:
    """Apply ``outcome`` to the payment and its collection, forward only; the events."""
    out: list[OutgoingMessage] = []
    if not service.advances(payment.state, outcome.state):
        return out
    key = customer_key(c.tenant_id, c.customer)
    envelope = {"tenantid": c.tenant_id, "correlationid": c.correlationid, "subject": c.invoice_id}
    payment.state, payment.updated_at = outcome.state, now
    if outcome.state == "processing":
        c.status, c.next_attempt_at = "awaiting", None
        return out
    if outcome.state == "succeeded":
        c.status, c.next_attempt_at = "succeeded", None
        data = PaymentData(
            payment_id=payment.id,
            invoice_id=c.invoice_id,
            customer=c.customer,
            amount=payment.amount,
            currency=payment.currency,
            method=payment.method,
        )
        event = PaymentSucceeded(source=service.SOURCE, data=data, **envelope)
        out.append(outgoing(event, topic=topics.EVENTS_PAYMENTS, key=key))
        return out
    payment.failure_code, payment.failure_message = outcome.failure_code, outcome.failure_message
    retry_at = service.next_attempt(now, c.attempts, schedule_days)
    c.status, c.next_attempt_at = ("due", retry_at) if retry_at else ("exhausted", None)
    failed = PaymentFailed(
        source=service.SOURCE,
        data=PaymentFailureData(
            payment_id=payment.id,
            invoice_id=c.invoice_id,
            customer=c.customer,
            amount=payment.amount,
            currency=payment.currency,
            attempt=c.attempts,
            failure_code=outcome.failure_code,
            failure_message=outcome.failure_message,
            next_attempt_at=retry_at,
        ),
        **envelope,
    )
    out.append(outgoing(failed, topic=topics.EVENTS_PAYMENTS, key=key))
    if retry_at is None:
        exhausted = DunningExhausted(
            source=service.SOURCE,
            data=DunningData(
                invoice_id=c.invoice_id,
                customer=c.customer,
                amount=c.amount,
                currency=c.currency,
                attempts=c.attempts,
            ),
            **envelope,
        )
        out.append(outgoing(exhausted, topic=topics.EVENTS_PAYMENTS, key=key))
    return out

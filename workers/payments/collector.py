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
from collections.abc import Callable
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
from storage.outbox import OutgoingMessage, add
from storage.payments import Collection, Payment, PaymentsRepository
from workers.payments import secrets, service
from workers.payments.errors import StripeUnavailable
from workers.payments.gateway import Gateway
from workers.payments.operations import Operations
from workers.payments.service import AmountNotCollectable, Outcome
from workers.runtime.tx import outgoing
from workers.settings import Settings

log = structlog.get_logger("billstream.payments")

Clock = Callable[[], datetime]


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
    def __init__(
        self,
        sessions: Sessions,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        on_emitted: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.on_emitted = on_emitted
        self._gateways: dict[str, Gateway] = {}
        self.operations = Operations(sessions, settings, self.gateway)

    async def loop(self) -> None:
        try:
            while True:
                try:
                    while await self.step():
                        pass
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # database or Stripe down: the next tick retries
                    log.warning("collection step failed; will retry", error=repr(e))
                await asyncio.sleep(self.settings.payments_tick_s)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the Stripe clients (the loop does when it stops)."""
        gateways, self._gateways = list(self._gateways.values()), {}
        await asyncio.gather(*(g.close() for g in gateways), return_exceptions=True)

    async def step(self) -> int:
        """Claim and run one batch of due attempts and queued Stripe operations; how many."""
        jobs = await self._claim()
        ops = await self.operations.claim(self.clock())
        if jobs or ops:
            await asyncio.gather(*(self._run(job) for job in jobs))
            finished = await asyncio.gather(*(self.operations.run(op) for op in ops))
            if any(finished):
                self.on_emitted()
        return len(jobs) + len(ops)

    async def _claim(self) -> list[Job]:
        now = self.clock()
        lease = timedelta(seconds=self.settings.payments_attempt_lease_s)
        jobs: list[Job] = []
        async with self.sessions() as session, session.begin():
            repo = PaymentsRepository(session)
            for c in await repo.claim_collections(now, self.settings.payments_claim_batch):
                resumed = c.status == "in_flight"
                if resumed:
                    payment = await repo.attempt(c.tenant_id, c.invoice_id, c.attempts)
                    if payment is None:  # cannot happen: written with the lease
                        resumed = False
                if not resumed:
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
                    session.add(payment)
                assert payment is not None
                c.status, c.next_attempt_at = "in_flight", now + lease
                jobs.append(
                    Job(
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
                )
        return jobs

    def gateway(self, secret_key: str) -> Gateway:
        """The client of one Stripe account (kept; closed when the loop stops)."""
        gw = self._gateways.get(secret_key)
        if gw is None:
            gw = self._gateways[secret_key] = Gateway(secret_key, self.settings.stripe_api_base)
        return gw

    async def _run(self, job: Job) -> None:
        try:
            outcome = await self._attempt(job)
        except StripeUnavailable as e:
            log.warning("Stripe unavailable; the attempt resumes after its lease", error=str(e))
            return
        except Exception as e:  # a bug or a broken account: the lease makes it resume later
            log.warning("collection attempt failed; it resumes after its lease", error=repr(e))
            return
        await self._record(job, outcome)

    async def _attempt(self, job: Job) -> Outcome:
        async with self.sessions() as session:
            repo = PaymentsRepository(session)
            account = await repo.account(job.tenant_id)
            mapping = await repo.customer(job.tenant_id, job.customer)
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

    async def _record(self, job: Job, outcome: Outcome) -> None:
        now = self.clock()
        async with self.sessions() as session, session.begin():
            repo = PaymentsRepository(session)
            c = await repo.collection(job.tenant_id, job.invoice_id, lock=True)
            payment = await repo.payment(job.tenant_id, job.payment_id, lock=True)
            if c is None or payment is None or c.status != "in_flight" or c.attempts != job.attempt:
                return  # settled meanwhile (a webhook, an offline payment, another replica)
            payment.stripe_payment_intent = outcome.payment_intent or payment.stripe_payment_intent
            payment.stripe_charge = outcome.charge or payment.stripe_charge
            messages = settle(c, payment, outcome, now, self.settings.dunning_schedule_days)
            await add(session, messages)
        if messages:
            self.on_emitted()


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

"""The payments job (``payments.collect``, on every replica): collection and dunning, and the
queued commands that call Stripe, as steps of one ``Tx`` each through ``runtime.jobs``.

Collection, each tick: (1) one step claims due collections (``FOR UPDATE SKIP LOCKED``),
writes each attempt's payment row (``creating``) and leases the collection; (2) Stripe is
called with no transaction open; (3) one step records the outcomes and emits
``payment.succeeded`` / ``payment.failed`` / ``payment.dunning_exhausted``. A worker killed
between (2) and (3) leaves a lease that runs out; the next claim of that collection finds the
attempt's PaymentIntent in Stripe (its metadata names the invoice and attempt) before it
would create one, so an invoice is never charged twice.

Queued operations (``payments.operations``): the command consumer queues a command that
calls Stripe (a ``payment_operations`` row; the command stays ``pending``). One step claims
and leases open operations; each is performed with no transaction open (commands.py:
``STRIPE_COMMANDS``); one step per operation then records its effects, its events and the
command's outcome, and marks it done. A lease that runs out resumes the operation, which
first looks for what the dead worker may have done in Stripe.

Bulkheads: an invoice or operation whose claim, Stripe call or record fails permanently
(bad data, a bug: not a decline, a normal outcome, and not Stripe or the database being
unavailable, which are retried) is quarantined, and every other one goes on. The Stripe
clients are closed by the job's ``close`` when the worker stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from pydantic import TypeAdapter

from schemas import topics
from schemas.payments import PaymentsCommand
from storage.payments import (
    Collection,
    Operation,
    PaymentsRepository,
    StripeAccount,
    StripeCustomer,
)
from workers.payments import secrets, service
from workers.payments.commands import STRIPE_COMMANDS, Finish, Stripe
from workers.payments.errors import NotConfigured, NotFound, SecretsKeyMissing, SecretUnreadable
from workers.payments.gateway import Gateway, Gateways
from workers.payments.service import AmountNotCollectable, Attempt, Outcome, QueuedOperation
from workers.runtime.errors import PermanentError, ShuttingDown
from workers.runtime.jobs import Item, Jobs
from workers.runtime.transient import is_transient
from workers.runtime.tx import Tx
from workers.settings import Settings

log = structlog.get_logger("billstream.payments")
_commands: TypeAdapter[PaymentsCommand] = TypeAdapter(PaymentsCommand)

COLLECT = "payments.collect"  # the job of collection and dunning (quarantine kind "invoice")
OPERATIONS = "payments.operations"  # queued Stripe commands (kind "payment_operation")


# --- steps: each a function of one Tx ---------------------------------------------------


async def claim_collections(
    tx: Tx, now: datetime, limit: int, only: Sequence[Item] | None
) -> Sequence[Collection]:
    """Lock due collections (not quarantined); ``only``: just these, if still due."""
    pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
    return await tx.repo(PaymentsRepository).claim_collections(now, limit, job=COLLECT, only=pairs)


async def start_attempts(
    tx: Tx, collections: Sequence[Collection], lease_until: datetime
) -> list[Attempt]:
    """Lease each collection and write its attempt's payment row."""
    repo = tx.repo(PaymentsRepository)
    return [
        await repo.start_attempt(c, lease_until=lease_until, payment_id=service.new_payment_id())
        for c in collections
    ]


async def record_outcomes(
    tx: Tx, done: Sequence[tuple[Attempt, Outcome]], dunning: service.Dunning
) -> int:
    """Apply what Stripe said to each attempt still leased for it; emit the events."""
    now = dunning.clock()
    repo = tx.repo(PaymentsRepository)
    for attempt, outcome in done:
        c = await repo.collection(attempt.tenant_id, attempt.invoice_id, lock=True)
        payment = await repo.payment(attempt.tenant_id, attempt.payment_id, lock=True)
        if c is None or payment is None or c.status != "in_flight" or c.attempts != attempt.attempt:
            continue  # settled meanwhile (a webhook, an offline payment, another replica)
        repo.link_stripe(payment, outcome.payment_intent, outcome.charge, keep=False)
        settled = service.settle(c, payment, outcome, now, dunning.schedule_days)
        if settled is not None:
            repo.settle(c, payment, settled, now)
            for e in settled.events:
                tx.emit(e, topic=topics.EVENTS_PAYMENTS, key=service.key_of(e))
    return len(done)


async def claim_operations(
    tx: Tx, now: datetime, limit: int, only: Sequence[Item] | None
) -> Sequence[Operation]:
    """Lock open operations (not quarantined); ``only``: just these, if still open."""
    pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
    return await tx.repo(PaymentsRepository).claim_operations(
        now, limit, job=OPERATIONS, only=pairs
    )


async def finish_operation(
    tx: Tx,
    op: QueuedOperation,
    cmd: PaymentsCommand,
    finish: Finish | None,
    error: PermanentError | None,
) -> bool:
    """Record an operation: its effects and events (``finish``) and the command's outcome
    (failed with ``error``, or with what ``finish`` raised), and mark it done. False if it
    was done already (another replica)."""
    repo = tx.repo(PaymentsRepository)
    row = await repo.operation(op.tenant_id, op.id)
    if row is None or row.state == "done":
        return False
    # the command's outcome, as a consumer records it (jobs have no Kafka record)
    async with tx.command(cmd) as result:
        if error is not None:
            raise error
        assert finish is not None
        result.update(await finish(tx))
    repo.finish_operation(row)
    return True


def _invoice(c: Collection) -> Item:
    return Item(c.tenant_id, "invoice", c.invoice_id)


def _attempt_item(a: Attempt) -> Item:
    return Item(a.tenant_id, "invoice", a.invoice_id)


def _operation(op: Operation) -> Item:
    return Item(op.tenant_id, "payment_operation", op.id)


# --- the job ------------------------------------------------------------------------------


class Collector:
    """The payments job: ``tick`` (registered with ``runtime.job``) runs one batch of due
    attempts and queued operations; ``close`` closes the Stripe clients."""

    def __init__(
        self,
        jobs: Jobs,
        settings: Settings,
        *,
        clock: service.Clock = service.utcnow,
        gateways: Gateways | None = None,
    ) -> None:
        self.jobs = jobs
        self.settings = settings
        self.dunning = service.Dunning(settings.dunning_schedule_days, clock)
        self.gateways = gateways or Gateways(settings.stripe_api_base)

    async def tick(self) -> bool:
        """One batch of due attempts and queued Stripe operations; True when it ran some."""
        return await self.step() > 0

    async def close(self) -> None:
        await self.gateways.close()

    async def step(self) -> int:
        """Claim and run one batch of due attempts and queued Stripe operations; how many."""
        attempts = await self._claim_attempts()
        ops = await self._claim_operations()
        if attempts:
            outcomes = await asyncio.gather(*(self._run(a) for a in attempts))
            done = [(a, o) for a, o in zip(attempts, outcomes, strict=True) if o is not None]
            await self.jobs.isolated(
                COLLECT,
                done,
                lambda d: _attempt_item(d[0]),
                lambda tx, part: record_outcomes(tx, part, self.dunning),
            )
        if ops:
            await asyncio.gather(*(self._perform(op) for op in ops))
        return len(attempts) + len(ops)

    # --- collection and dunning

    async def _claim_attempts(self) -> list[Attempt]:
        now = self.dunning.clock()
        lease_until = now + timedelta(seconds=self.settings.payments_attempt_lease_s)
        limit = self.settings.payments_claim_batch
        claimed: list[Attempt] = []

        async def start(tx: Tx, collections: Sequence[Collection]) -> int:
            started = await start_attempts(tx, collections, lease_until)
            tx.after_commit(lambda: claimed.extend(started))
            return len(started)

        await self.jobs.claimed(
            COLLECT, lambda tx, only: claim_collections(tx, now, limit, only), _invoice, start
        )
        return claimed

    async def _run(self, attempt: Attempt) -> Outcome | None:
        """The attempt's outcome; None if it must wait: Stripe (or the database) unavailable,
        or the worker misconfigured (it resumes after its lease), or the invoice quarantined
        because its attempt failed permanently (its data, a bug)."""
        try:
            return await self._charge(attempt)
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
                await self.jobs.quarantine(COLLECT, _attempt_item(attempt), e)
            return None

    async def _charge(self, a: Attempt) -> Outcome:
        async def read(tx: Tx) -> tuple[StripeAccount | None, StripeCustomer | None]:
            repo = tx.repo(PaymentsRepository)
            return await repo.account(a.tenant_id), await repo.customer(a.tenant_id, a.customer)

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
            amount = service.to_stripe_amount(a.amount, a.currency)
        except AmountNotCollectable as e:
            return Outcome("failed", None, None, "amount_not_collectable", str(e))
        gateway = self.gateways.for_key(secrets.decrypt(self.settings, account.secret_key))
        if a.resumed:
            found = await gateway.find_intent(a.tenant_id, a.invoice_id, a.attempt)
            if found is not None:
                log.info("resumed attempt found its PaymentIntent", invoice=a.invoice_id)
                return service.outcome_of_intent(found)
        return await gateway.charge(
            tenant=a.tenant_id,
            invoice_id=a.invoice_id,
            attempt=a.attempt,
            payment_id=a.payment_id,
            amount=amount,
            currency=a.currency,
            stripe_customer=mapping.stripe_customer_id,
            payment_method=mapping.payment_method_id,
        )

    # --- queued Stripe operations

    async def _claim_operations(self) -> list[QueuedOperation]:
        now = self.dunning.clock()
        lease_until = now + timedelta(seconds=self.settings.payments_attempt_lease_s)
        limit = self.settings.payments_claim_batch
        claimed: list[QueuedOperation] = []

        async def start(tx: Tx, ops: Sequence[Operation]) -> int:
            started = tx.repo(PaymentsRepository).lease_operations(ops, lease_until)
            tx.after_commit(lambda: claimed.extend(started))
            return len(started)

        await self.jobs.claimed(
            OPERATIONS, lambda tx, only: claim_operations(tx, now, limit, only), _operation, start
        )
        return claimed

    async def _gateway(self, tenant: str) -> Gateway:
        account = await self.jobs.run(
            OPERATIONS, lambda tx: tx.repo(PaymentsRepository).account(tenant)
        )
        if account is None:
            raise NotConfigured("configure Stripe first (PUT /v1/integrations/stripe)")
        return self.gateways.for_key(secrets.decrypt(self.settings, account.secret_key))

    async def _perform(self, op: QueuedOperation) -> bool:
        """Carry ``op`` out; True when its outcome is recorded. An operation that fails for a
        reason of its own (a command row that does not parse, a bug) is quarantined; Stripe
        or the database unavailable: resumed after the lease."""
        try:
            cmd = _commands.validate_python(op.command)
            perform = STRIPE_COMMANDS.get(type(cmd))
            finish: Finish | None = None
            error: PermanentError | None = None
            try:
                if perform is None:
                    raise NotFound(f"{cmd.type} is not a Stripe operation")
                stripe = Stripe(
                    lambda step: self.jobs.run(OPERATIONS, step),
                    self._gateway,
                    op.resumed,
                    self.dunning.clock,
                )
                finish = await perform(cmd, stripe)
            except PermanentError as e:
                error = e
            return await self.jobs.run(
                OPERATIONS, lambda tx: finish_operation(tx, op, cmd, finish, error)
            )
        except (asyncio.CancelledError, ShuttingDown):
            raise
        except Exception as e:
            if is_transient(e):
                log.warning("payments operation failed; resumed after its lease", error=repr(e))
            elif isinstance(e, SecretsKeyMissing) and not isinstance(e, SecretUnreadable):
                log.error("payments operation failed; resumed after its lease", error=str(e))
            else:
                item = Item(op.tenant_id, "payment_operation", op.id)
                await self.jobs.quarantine(OPERATIONS, item, e)
            return False

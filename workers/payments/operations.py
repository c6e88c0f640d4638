"""Commands that call Stripe (customer sync, payment methods, refunds), run by the
collector loop outside any transaction.

The command consumer only queues them (a ``payment_operations`` row, in its batch
transaction; the command stays ``pending``). The collector then claims an operation
(``FOR UPDATE SKIP LOCKED``, leased), reads what it needs, calls Stripe with no
transaction open, and in one transaction applies the effects, emits the events, records
the command's outcome and marks the operation done. A lease that runs out (the worker
died) resumes the operation, which first looks for what the dead worker may have done
in Stripe (the customer, the refund) before doing it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import TypeAdapter

from schemas import topics
from schemas.payments import (
    AttachPaymentMethod,
    PaymentRefunded,
    PaymentsCommand,
    RefundData,
    RefundPayment,
    SyncCustomer,
)
from storage.commands import CommandOutcome
from storage.db import Sessions
from storage.outbox import OutgoingMessage
from storage.payments import Operation, PaymentsRepository, Refund
from workers.payments import secrets, service
from workers.payments.errors import (
    Conflict,
    NotConfigured,
    NotFound,
    SecretsKeyMissing,
    SecretUnreadable,
)
from workers.payments.gateway import Gateway
from workers.runtime.errors import PermanentError, ShuttingDown
from workers.runtime.jobs import Item, Jobs
from workers.runtime.transient import is_transient
from workers.runtime.tx import Tx, outgoing
from workers.settings import Settings

log = structlog.get_logger("billstream.payments")
_commands: TypeAdapter[PaymentsCommand] = TypeAdapter(PaymentsCommand)

DEFERRED = (SyncCustomer, AttachPaymentMethod, RefundPayment)
OPERATIONS = "payments.operations"  # the job (quarantine kind "payment_operation")


def _operation_item(op: Operation) -> Item:
    return Item(op.tenant_id, "payment_operation", op.id)


@dataclass(frozen=True)
class OpJob:
    tenant_id: str
    id: str
    type: str
    command: dict[str, Any]
    resumed: bool


@dataclass
class Done:
    """What an operation's last transaction does once Stripe has answered."""

    apply: Callable[[PaymentsRepository], Awaitable[dict[str, Any]]]
    messages: list[OutgoingMessage] = field(default_factory=list)


class Operations:
    def __init__(
        self,
        sessions: Sessions,
        settings: Settings,
        gateway: Callable[[str], Gateway],
        jobs: Jobs,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.gateway_for = gateway
        self.jobs = jobs

    async def claim(self, now: datetime) -> list[OpJob]:
        """One job step: claim open operations (not quarantined) and lease them."""
        lease = timedelta(seconds=self.settings.payments_attempt_lease_s)
        claimed: list[OpJob] = []

        async def claim(tx: Tx, only: Sequence[Item] | None) -> Sequence[Operation]:
            pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
            return await PaymentsRepository(tx.session).claim_operations(
                now, self.settings.payments_claim_batch, job=OPERATIONS, only=pairs
            )

        async def start(tx: Tx, ops: Sequence[Operation]) -> int:
            started = []
            for op in ops:
                started.append(
                    OpJob(op.tenant_id, op.id, op.type, op.command, op.state != "pending")
                )
                op.state, op.lease_until = "in_flight", now + lease
            tx.after_commit(lambda: claimed.extend(started))
            return len(started)

        await self.jobs.claimed(OPERATIONS, claim, _operation_item, start)
        return claimed

    async def run(self, job: OpJob) -> bool:
        """Carry ``job`` out; True when its outcome is recorded (events may be emitted). An
        operation that fails for a reason of its own (a command row that does not parse, a
        bug) is quarantined; Stripe or the database unavailable: resumed after the lease."""
        try:
            cmd = _commands.validate_python(job.command)
            try:
                done = await self._perform(cmd, job.resumed)
            except PermanentError as e:
                return await self._finish(job, None, e)
            return await self._finish(job, done, None)
        except (asyncio.CancelledError, ShuttingDown):
            raise
        except Exception as e:
            if is_transient(e):
                log.warning("payments operation failed; resumed after its lease", error=repr(e))
            elif isinstance(e, SecretsKeyMissing) and not isinstance(e, SecretUnreadable):
                log.error("payments operation failed; resumed after its lease", error=str(e))
            else:
                item = Item(job.tenant_id, "payment_operation", job.id)
                await self.jobs.quarantine(OPERATIONS, item, e)
            return False

    async def _finish(self, job: OpJob, done: Done | None, error: PermanentError | None) -> bool:
        async def finish(tx: Tx) -> bool:
            repo = PaymentsRepository(tx.session)
            op = await repo.operation(job.tenant_id, job.id)
            if op is None or op.state == "done":
                return False
            failure = error
            result: dict[str, Any] = {}
            messages: list[OutgoingMessage] = []
            if done is not None:
                done.messages.clear()  # a transaction retried after a transient failure
                try:
                    async with tx.session.begin_nested():
                        result = await done.apply(repo)
                        messages = done.messages
                except PermanentError as e:
                    failure = e
            if failure is not None:
                outcome = CommandOutcome(
                    job.tenant_id, job.id, "failed", error=failure.to_problem()
                )
            else:
                outcome = CommandOutcome(job.tenant_id, job.id, "succeeded", result=result)
                tx.outgoing += messages
            tx.outcomes.append((job.type, outcome))
            op.state, op.lease_until = "done", None
            return True

        return await self.jobs.run(OPERATIONS, finish)

    async def _gateway(self, tenant: str) -> Gateway:
        async with self.sessions() as session:
            account = await PaymentsRepository(session).account(tenant)
        if account is None:
            raise NotConfigured("configure Stripe first (PUT /v1/integrations/stripe)")
        return self.gateway_for(secrets.decrypt(self.settings, account.secret_key))

    async def _perform(self, cmd: Any, resumed: bool) -> Done:
        if isinstance(cmd, SyncCustomer):
            return await self._sync(cmd, resumed)
        if isinstance(cmd, AttachPaymentMethod):
            return await self._attach(cmd)
        if isinstance(cmd, RefundPayment):
            return await self._refund(cmd, resumed)
        raise NotFound(f"{cmd.type} is not a Stripe operation")

    async def _sync(self, cmd: SyncCustomer, resumed: bool) -> Done:
        d, tenant = cmd.data, cmd.tenantid
        async with self.sessions() as session:
            existing = await PaymentsRepository(session).customer(tenant, d.customer)
        if existing is not None:
            stripe_id = existing.stripe_customer_id
        else:
            gateway = await self._gateway(tenant)
            found = await gateway.find_customer(tenant, d.customer) if resumed else None
            stripe_id = found or await gateway.create_customer(tenant, d.customer, d.email, d.name)

        async def apply(repo: PaymentsRepository) -> dict[str, Any]:
            await repo.set_customer(tenant, d.customer, stripe_id)
            return {"customer": d.customer, "stripe_customer_id": stripe_id}

        return Done(apply)

    async def _attach(self, cmd: AttachPaymentMethod) -> Done:
        d, tenant = cmd.data, cmd.tenantid
        async with self.sessions() as session:
            mapping = await PaymentsRepository(session).customer(tenant, d.customer)
        if mapping is None:
            raise NotFound(f"customer {d.customer!r} is not synced to Stripe", field="customer")
        stripe_customer = mapping.stripe_customer_id
        gateway = await self._gateway(tenant)
        await gateway.attach(d.payment_method, stripe_customer)  # attaching again is harmless

        async def apply(repo: PaymentsRepository) -> dict[str, Any]:
            row = await repo.customer(tenant, d.customer)
            assert row is not None
            row.payment_method_id = d.payment_method
            return {"customer": d.customer, "payment_method": d.payment_method}

        return Done(apply)

    async def _refund(self, cmd: RefundPayment, resumed: bool) -> Done:
        d, tenant = cmd.data, cmd.tenantid
        async with self.sessions() as session:
            repo = PaymentsRepository(session)
            if await repo.refund(tenant, d.refund_id) is not None:
                raise Conflict(f"refund {d.refund_id!r} exists", field="refund_id")
            payment = await repo.payment(tenant, d.payment_id)
        if payment is None or payment.state != "succeeded":
            raise NotFound(f"no succeeded payment {d.payment_id!r}", field="payment_id")
        remaining = payment.amount - payment.amount_refunded
        amount = d.amount if d.amount is not None else remaining
        if amount <= 0 or amount > remaining:
            raise Conflict(f"at most {remaining} can be refunded", field="amount")
        stripe_refund: str | None = None
        if payment.method == "card":
            if payment.stripe_payment_intent is None:
                raise Conflict("the payment has no PaymentIntent", field="payment_id")
            gateway = await self._gateway(tenant)
            intent = payment.stripe_payment_intent
            if resumed:
                stripe_refund = await gateway.find_refund(intent, d.refund_id)
            if stripe_refund is None:
                stripe_amount = service.to_stripe_amount(amount, payment.currency)
                stripe_refund = await gateway.refund(intent, stripe_amount, d.refund_id)
        done = Done(lambda repo: _record_refund(repo, cmd, amount, stripe_refund, done))
        return done


async def _record_refund(
    repo: PaymentsRepository,
    cmd: RefundPayment,
    amount: int,
    stripe_refund: str | None,
    done: Done,
) -> dict[str, Any]:
    d, tenant = cmd.data, cmd.tenantid
    payment = await repo.payment(tenant, d.payment_id, lock=True)
    assert payment is not None
    payment.amount_refunded = min(payment.amount, payment.amount_refunded + amount)
    repo.session.add(
        Refund(
            tenant_id=tenant,
            id=d.refund_id,
            payment_id=payment.id,
            amount=amount,
            reason=d.reason,
            state="succeeded",
            stripe_refund_id=stripe_refund,
            correlationid=cmd.correlationid,
        )
    )
    event = PaymentRefunded(
        source=service.SOURCE,
        subject=payment.invoice_id,
        data=RefundData(
            refund_id=d.refund_id,
            payment_id=payment.id,
            invoice_id=payment.invoice_id,
            customer=payment.customer,
            amount=amount,
            amount_refunded=payment.amount_refunded,
            currency=payment.currency,
        ),
        **cmd.caused(),
    )
    key = f"{tenant}:{payment.customer}"
    done.messages.append(outgoing(event, topic=topics.EVENTS_PAYMENTS, key=key))
    return {"refund_id": d.refund_id, "amount": amount, "stripe_refund_id": stripe_refund}

"""Invoicing's subscriptions and its job: decode → one transaction → commands/payments →
done; billing runs on the runtime's job loop (``jobs.py``)."""

from __future__ import annotations

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.envelope import WIRE
from schemas.invoicing import InvoicingCommand
from schemas.payments import PaymentEvent
from workers.invoicing import commands, credit_jobs, jobs
from workers.invoicing.payments import PAYMENT_EVENTS
from workers.invoicing.scheduler import Scheduler
from workers.runtime import Batch, Runtime, Tx
from workers.settings import Settings

_commands: TypeAdapter[InvoicingCommand] = TypeAdapter(InvoicingCommand)
_payments: TypeAdapter[PaymentEvent] = TypeAdapter(PaymentEvent)


def decode_command(raw: bytes) -> InvoicingCommand:
    return _commands.validate_json(raw, context=WIRE)


def decode_payment(raw: bytes) -> PaymentEvent:
    return _payments.validate_json(raw, context=WIRE)


async def on_command(batch: Batch[InvoicingCommand], tx: Tx) -> None:
    """Customers, plans, subscriptions, billing runs and invoice state changes."""
    for message in await tx.claim(batch):
        async with tx.command(message) as result:
            result.update(await commands.handle(message.event, tx))


async def on_payment(batch: Batch[PaymentEvent], tx: Tx) -> None:
    """Records payments on invoices; a covered invoice becomes paid. An invoice whose
    dunning is exhausted becomes uncollectible; other payment events are not for us."""
    for message in await tx.claim(batch):
        handler = PAYMENT_EVENTS.get(type(message.event))
        if handler is None:
            continue
        reason = await handler(message.event, tx)
        if reason is not None:
            tx.reject(message, reason, code="unusable_payment")


def register(runtime: Runtime, settings: Settings) -> None:
    runtime.consumer(
        topics.COMMANDS_INVOICING,
        group=groups.INVOICING_COMMANDS,
        decode=decode_command,
        commands=True,
    )(on_command)
    runtime.consumer(
        topics.EVENTS_PAYMENTS, group=groups.INVOICING_PAYMENTS, decode=decode_payment
    )(on_payment)
    scheduler = Scheduler(runtime.jobs, settings)
    runtime.job(
        jobs.BILLING, scheduler.tick, every_s=settings.invoicing_tick_s, close=scheduler.close
    )
    credit = credit_jobs.CreditJobs(runtime.jobs, settings.invoicing_chunk)
    runtime.job(credit_jobs.CREDITS, credit.tick, every_s=settings.invoicing_tick_s)

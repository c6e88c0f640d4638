"""Invoicing subscribers and the billing scheduler."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog
from pydantic import TypeAdapter

from schemas import topics
from schemas.envelope import WIRE
from schemas.invoicing import InvoicingCommand
from schemas.payments import DunningExhausted, PaymentEvent, PaymentRefunded, PaymentSucceeded
from storage.invoicing import InvoicingRepository
from workers.invoicing import payments
from workers.invoicing.billing import Billing, Work
from workers.invoicing.commands import Commands
from workers.metering.handlers import USAGE_GROUP as METERING_GROUP
from workers.runtime import Batch, Runtime, Tx
from workers.runtime.offsets import OffsetReader
from workers.settings import Settings

COMMANDS_GROUP = "billstream.invoicing.commands"
PAYMENTS_GROUP = "billstream.invoicing.payments"

log = structlog.get_logger("billstream.invoicing")
_commands: TypeAdapter[InvoicingCommand] = TypeAdapter(InvoicingCommand)
_payments: TypeAdapter[PaymentEvent] = TypeAdapter(PaymentEvent)


def register(runtime: Runtime, settings: Settings) -> None:
    billing = Billing(
        runtime.sessions,
        chunk=settings.invoicing_chunk,
        lookback=settings.late_usage_lookback,
        on_emitted=runtime.on_committed,
    )

    @runtime.consumer(
        topics.COMMANDS_INVOICING,
        group=COMMANDS_GROUP,
        decode=lambda raw: _commands.validate_json(raw, context=WIRE),
        commands=True,
    )
    async def on_command(batch: Batch[InvoicingCommand], tx: Tx) -> None:
        """Customers, plans, subscriptions, billing runs and invoice state changes."""
        commands = Commands(tx.session, Work(tx.session, tx.outgoing), billing)
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                result.update(await commands.apply(message.event))

    @runtime.consumer(
        topics.EVENTS_PAYMENTS,
        group=PAYMENTS_GROUP,
        decode=lambda raw: _payments.validate_json(raw, context=WIRE),
    )
    async def on_payment(batch: Batch[PaymentEvent], tx: Tx) -> None:
        """Records payments on invoices; a covered invoice becomes paid. An invoice whose
        dunning is exhausted becomes uncollectible; other payment events are not for us."""
        work = Work(tx.session, tx.outgoing)
        for message in await tx.claim(batch):
            event = message.event
            if isinstance(event, DunningExhausted):
                await payments.uncollectible(tx.session, work, event)
                continue
            if isinstance(event, PaymentRefunded):
                await payments.refunded(tx.session, work, event)
                continue
            if not isinstance(event, PaymentSucceeded):
                continue
            reason = await payments.record(tx.session, work, event)
            if reason is not None:
                tx.reject(message, reason, code="unusable_payment")

    scheduler = Scheduler(runtime, settings, billing)
    runtime.background(scheduler.loop)


class Scheduler:
    """Runs billing: requested runs (``RunBilling``, with their ``as_of``) first, then the
    periodic run as of now. Every replica runs one; row locks share the work."""

    def __init__(self, runtime: Runtime, settings: Settings, billing: Billing) -> None:
        self.runtime = runtime
        self.billing = billing
        self.interval_s = settings.invoicing_tick_s
        self.offsets = OffsetReader(settings)

    async def loop(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # broker or database down: the next tick retries
                    log.warning("billing tick failed; will retry", error=repr(e), exc_info=True)
                await asyncio.sleep(self.interval_s)
        finally:
            await self.offsets.close()

    async def tick(self) -> None:
        while await self.requested_run():
            pass
        await self.run(datetime.now(UTC), None)

    async def run(self, as_of: datetime, tenant_id: str | None) -> tuple[int, int, int]:
        ends = await self.offsets.end_offsets(topics.USAGE)
        committed = await self.offsets.committed(METERING_GROUP, topics.USAGE)
        r = await self.billing.run(as_of, tenant_id, ends, committed)
        if r.invoices_created or r.invoices_finalized:
            log.info(
                "billing run",
                as_of=as_of.isoformat(),
                tenant=tenant_id,
                created=r.invoices_created,
                finalized=r.invoices_finalized,
                waiting=r.drafts_waiting,
            )
        return r.invoices_created, r.invoices_finalized, r.drafts_waiting

    async def requested_run(self) -> bool:
        """Carry out one pending ``RunBilling``; False when none is pending. The run's row
        stays locked while it runs, so no other replica takes it; a crash leaves it pending
        and it is run again (periods are never invoiced twice)."""
        async with self.runtime.sessions() as session, session.begin():
            repo = InvoicingRepository(session)
            run = await repo.claim_pending_run()
            if run is None:
                return False
            created, finalized, waiting = await self.run(run.as_of, run.tenant_id)
            run.invoices_created += created
            run.invoices_finalized += finalized
            run.drafts_waiting = waiting
            run.status = "completed"
            run.completed_at = datetime.now(UTC)
        return True

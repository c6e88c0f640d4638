"""Invoicing subscribers and the billing scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from pydantic import TypeAdapter

from schemas import topics
from schemas.envelope import WIRE
from schemas.invoicing import InvoicingCommand
from schemas.payments import DunningExhausted, PaymentEvent, PaymentRefunded, PaymentSucceeded
from storage.invoicing import BillingRun, InvoicingRepository
from workers.invoicing import payments
from workers.invoicing.billing import Billing, Work
from workers.invoicing.commands import Commands
from workers.metering.handlers import USAGE_GROUP as METERING_GROUP
from workers.runtime import Batch, Item, Runtime, Tx
from workers.runtime.offsets import OffsetReader
from workers.settings import Settings

COMMANDS_GROUP = "billstream.invoicing.commands"
REQUESTED_RUNS = "invoicing.requested_runs"
PAYMENTS_GROUP = "billstream.invoicing.payments"

log = structlog.get_logger("billstream.invoicing")
_commands: TypeAdapter[InvoicingCommand] = TypeAdapter(InvoicingCommand)
_payments: TypeAdapter[PaymentEvent] = TypeAdapter(PaymentEvent)


def register(runtime: Runtime, settings: Settings) -> None:
    billing = Billing(
        runtime.jobs, chunk=settings.invoicing_chunk, lookback=settings.late_usage_lookback
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
    runtime.job(
        "invoicing.billing", scheduler.tick, every_s=settings.invoicing_tick_s,
        close=scheduler.offsets.close,
    )  # fmt: skip


class Scheduler:
    """Runs billing: requested runs (``RunBilling``, with their ``as_of``) first, then the
    periodic run as of now. Every replica runs one; row locks share the work."""

    def __init__(self, runtime: Runtime, settings: Settings, billing: Billing) -> None:
        self.runtime = runtime
        self.billing = billing
        self.interval_s = settings.invoicing_tick_s
        self.offsets = OffsetReader(settings)

    async def tick(self) -> bool:
        while await self.requested_run():
            pass
        await self.run(datetime.now(UTC), None)
        return False

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
        and it is run again (periods are never invoiced twice). A run that fails for good
        is quarantined and marked failed with the reason, and the next one goes on."""
        step = await self.runtime.jobs.claimed(
            REQUESTED_RUNS, self._claim_run, _run_item, self._carry_out, mark=self._failed
        )
        return step.claimed > 0

    @staticmethod
    async def _claim_run(tx: Tx, only: Sequence[Item] | None) -> list[BillingRun]:
        run = await tx.repo(InvoicingRepository).claim_pending_run(
            job=REQUESTED_RUNS, only=None if only is None else [(i.tenant_id, i.id) for i in only]
        )
        return [] if run is None else [run]

    async def _carry_out(self, tx: Tx, runs: Sequence[BillingRun]) -> int:
        for run in runs:
            created, finalized, waiting = await self.run(run.as_of, run.tenant_id)
            run.invoices_created += created
            run.invoices_finalized += finalized
            run.drafts_waiting = waiting
            run.status = "completed"
            run.completed_at = datetime.now(UTC)
        return len(runs)

    @staticmethod
    async def _failed(tx: Tx, item: Item, reason: str) -> None:
        await tx.repo(InvoicingRepository).fail_run(item.tenant_id, item.id, reason)


def _run_item(run: BillingRun) -> Item:
    return Item(run.tenant_id, "billing_run", run.id)

"""The billing job: requested runs (``RunBilling``) first, then the periodic run as of now.

A requested run is held by one replica and helped by the others: they all work its chunks
(``jobs.Billing``), each chunk counting what it created and finalized on the run in its own
transaction, and the holder completes it once no helper has a chunk in flight (ADR 0057).
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from schemas import groups, topics
from storage.invoicing import InvoicingRepository
from storage.invoicing.runs import HeldRun, held_run, helped_run
from workers.invoicing.jobs import REQUESTED_RUNS, Billing, RunResult
from workers.runtime import Item, Jobs, Tx
from workers.runtime.errors import ShuttingDown, describe
from workers.runtime.offsets import OffsetReader
from workers.runtime.transient import retrying
from workers.settings import Settings

log = structlog.get_logger("billstream.invoicing")


# --- the job: requested runs, then the periodic run ------------------------------------


class Scheduler:
    """Runs billing: requested runs (``RunBilling``, with their ``as_of``) first, then the
    periodic run as of now. Every replica runs one; locks share the work: a requested run
    is held by one replica and helped by the others."""

    def __init__(self, jobs: Jobs, settings: Settings) -> None:
        self.jobs = jobs
        self.billing = Billing(
            jobs,
            chunk=settings.invoicing_chunk,
            lookback=settings.late_usage_lookback,
            parallel=settings.invoicing_parallel,
        )
        self.offsets = OffsetReader(settings)

    async def tick(self) -> bool:
        while await self.requested_run():
            pass
        await self.run(datetime.now(UTC), None)
        return False

    async def close(self) -> None:
        await self.offsets.close()

    async def run(
        self,
        as_of: datetime,
        tenant_id: str | None,
        requested: HeldRun | None = None,
        *,
        helping: bool = False,
    ) -> RunResult:
        """One billing run as of ``as_of`` (``requested``: the requested run it works, held
        or, ``helping``, helped); logged when it billed anything."""
        ends = await self.offsets.end_offsets(topics.USAGE)
        committed = await self.offsets.committed(groups.METERING_USAGE, topics.USAGE)
        r = await self.billing.run(as_of, tenant_id, ends, committed, requested)
        if r.invoices_created or r.invoices_finalized:
            log.info(
                "billing run",
                as_of=as_of.isoformat(),
                tenant=tenant_id,
                run=None if requested is None else requested.id,
                helping=helping,
                created=r.invoices_created,
                finalized=r.invoices_finalized,
                waiting=r.drafts_waiting,
            )
        return r

    async def requested_run(self) -> bool:
        """Carry out one pending ``RunBilling``; False when none is pending that no other
        replica holds (this replica then helps one of those, ``help``). The run is held
        (``storage.invoicing.runs``: an advisory lock on a connection of its own, with no
        transaction left open for the length of the run) while it runs, so no other replica
        takes it; a crash leaves it pending and it is run again (periods are never invoiced
        twice). Once its own work is done the holder waits for its helpers' chunks in flight
        (``HeldRun.alone``), bills what they left, and completes it. A run that fails for
        good is quarantined and marked failed with the reason, and the next one goes on."""
        async with held_run(self.jobs.sessions, job=REQUESTED_RUNS) as run:
            if run is not None:
                await self._carry_out(run)
                return True
        await self.help()
        return False

    async def _carry_out(self, run: HeldRun) -> None:
        async def again() -> RunResult:
            # a transient failure (the database or the broker away a moment) retries the
            # run, as a claimed step would; only a permanent one fails it
            return await retrying(
                lambda: self.run(run.as_of, run.tenant_id, run),
                initial_s=self.jobs.retry_initial_s,
                max_s=self.jobs.retry_max_s,
                stopping=self.jobs.stopping,
            )

        log.info("billing run held", run=run.id, tenant=run.tenant_id)
        try:
            await again()
            async with run.alone():
                # what a helper left: a chunk a helper had in flight when it died, or one
                # the holder's last claim skipped while a helper had it locked
                result = await again()

                async def complete(tx: Tx) -> bool:
                    return await tx.repo(InvoicingRepository).complete_pending_run(
                        run.tenant_id, run.id, waiting=result.drafts_waiting,
                        at=datetime.now(UTC),
                    )  # fmt: skip

                await self.jobs.run(REQUESTED_RUNS, complete)
        except ShuttingDown:
            raise
        except Exception as e:
            log.warning("billing run failed", run=run.id, error=describe(e))
            item = Item(run.tenant_id, "billing_run", run.id)
            await self.jobs.quarantine(REQUESTED_RUNS, item, e, _failed)

    async def help(self) -> None:
        """Work the chunks of the oldest pending run another replica holds, as its holder
        does (its ``as_of`` and tenant); each chunk counts itself on the run. The holder
        completes it (or fails it); a failure here is logged and the helping stops."""
        async with helped_run(self.jobs.sessions, job=REQUESTED_RUNS) as run:
            if run is None:
                return
            log.info("helping billing run", run=run.id, tenant=run.tenant_id)
            try:
                await self.run(run.as_of, run.tenant_id, run, helping=True)
            except ShuttingDown:
                raise
            except Exception as e:
                log.warning("helping a billing run failed", run=run.id, error=describe(e))


async def _failed(tx: Tx, item: Item, reason: str) -> None:
    await tx.repo(InvoicingRepository).fail_run(item.tenant_id, item.id, reason)

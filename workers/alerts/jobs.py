"""The sweep, every ``alerts_tick_s``: resolve the alerts whose period ended or whose
invoice was settled, raise overdue-invoice alerts.

Each part is claimed work of ``runtime.jobs`` (``Jobs.claimed``): a chunk of rows locked
and applied in one transaction, transient failures retried; an alert or invoice a part
fails on permanently (one tenant's poison row) is quarantined and the sweep carries on for
everyone else. Replicas share the work through row locks (``SKIP LOCKED``) and the alerts'
uniqueness."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from storage.alerts import AlertsRepository
from workers.alerts import service
from workers.alerts.publish import publish
from workers.alerts.service import Clock, OverdueInvoice, utc_now
from workers.runtime import Item, Jobs, Tx

SWEEP_LIMIT = 500  # rows per part and transaction
RESOLVE_ENDED = "alerts.resolve_ended_periods"  # quarantine kind "alert"
RESOLVE_SETTLED = "alerts.resolve_settled_invoices"  # quarantine kind "alert"
OVERDUE = "alerts.invoice_overdue"  # quarantine kind "invoice"


# --- resolve alerts whose period ended -------------------------------------------------


async def claim_ended(
    tx: Tx, only: Sequence[Item] | None, *, now: datetime
) -> list[tuple[str, str]]:
    """Lock the next open alerts whose period is over: (tenant, alert id)."""
    ids = [i.id for i in only] if only is not None else None
    return await tx.repo(AlertsRepository).ended_periods(
        now, SWEEP_LIMIT, job=RESOLVE_ENDED, only=ids
    )


async def resolve_ended(tx: Tx, alerts: Sequence[tuple[str, str]], *, now: datetime) -> int:
    ids = [id for _, id in alerts]
    done = await tx.repo(AlertsRepository).resolve_claimed(ids, ["period ended"] * len(ids), now)
    publish(tx, done)
    return len(done)


# --- resolve alerts whose invoice was settled ------------------------------------------


async def claim_settled(tx: Tx, only: Sequence[Item] | None) -> list[tuple[str, str, str]]:
    """Lock the next open invoice alerts whose invoice is settled: (tenant, alert id,
    invoice status)."""
    ids = [i.id for i in only] if only is not None else None
    return await tx.repo(AlertsRepository).settled_invoices(
        SWEEP_LIMIT, job=RESOLVE_SETTLED, only=ids
    )


async def resolve_settled(tx: Tx, alerts: Sequence[tuple[str, str, str]], *, now: datetime) -> int:
    done = await tx.repo(AlertsRepository).resolve_claimed(
        [id for _, id, _ in alerts], [f"invoice {status}" for _, _, status in alerts], now
    )
    publish(tx, done)
    return len(done)


# --- raise overdue-invoice alerts -------------------------------------------------------


async def claim_overdue(
    tx: Tx, only: Sequence[Item] | None, *, now: datetime
) -> list[OverdueInvoice]:
    """The next overdue invoices of tenants with an ``invoice_overdue`` rule that has not
    alerted about them yet."""
    pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
    return await tx.repo(AlertsRepository).overdue_invoices(
        now, SWEEP_LIMIT, job=OVERDUE, only=pairs
    )


async def raise_overdue(tx: Tx, overdue: Sequence[OverdueInvoice], *, now: datetime) -> int:
    repo = tx.repo(AlertsRepository)
    rules = await repo.rules_for(
        {i.tenant_id for i in overdue}, ["operational"], ["invoice_overdue"]
    )
    raised = await repo.raise_alerts(service.overdue_alerts(rules, overdue, now))
    publish(tx, raised)
    return len(raised)


# --- the tick ----------------------------------------------------------------------------


def _alert(a: tuple[str, str] | tuple[str, str, str]) -> Item:
    return Item(a[0], "alert", a[1])


def _invoice(i: OverdueInvoice) -> Item:
    return Item(i.tenant_id, "invoice", i.invoice_id)


@dataclass(frozen=True)
class Sweep:
    jobs: Jobs
    clock: Clock = utc_now

    async def tick(self) -> bool:
        """One chunk of each part; True when a part claimed a full chunk (more is due)."""
        now = self.clock()
        steps = [
            await self.jobs.claimed(
                RESOLVE_ENDED,
                partial(claim_ended, now=now),
                _alert,
                partial(resolve_ended, now=now),
            ),
            await self.jobs.claimed(
                RESOLVE_SETTLED, claim_settled, _alert, partial(resolve_settled, now=now)
            ),
            await self.jobs.claimed(
                OVERDUE, partial(claim_overdue, now=now), _invoice, partial(raise_overdue, now=now)
            ),
        ]
        return max(s.claimed for s in steps) >= SWEEP_LIMIT

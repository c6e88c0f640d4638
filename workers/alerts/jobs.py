"""The sweep, every ``alerts_tick_s``: resolve the alerts whose period ended or whose
invoice was settled, raise overdue-invoice alerts, and look at the projected credit balance
of the customers credit balance rules watch (one chunk of them per tick, a cursor going
through them all).

Each part is claimed work of ``runtime.jobs`` (``Jobs.claimed``): a chunk of rows locked
and applied in one transaction, transient failures retried; an alert or invoice a part
fails on permanently (one tenant's poison row) is quarantined and the sweep carries on for
everyone else. Replicas share the work through row locks (``SKIP LOCKED``) and the alerts'
uniqueness; the credit part locks nothing (invoicing's rows are not the alerts worker's to
hold): each replica makes its own pass, and the crossing state keeps each alert once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from storage.alert_credits import CreditAlertsRepository
from storage.alerts import AlertsRepository
from workers.alerts import service
from workers.alerts.credit import evaluate_credit
from workers.alerts.publish import publish
from workers.alerts.service import Clock, OverdueInvoice, utc_now
from workers.runtime import Item, Jobs, Tx

SWEEP_LIMIT = 500  # rows per part and transaction
RESOLVE_ENDED = "alerts.resolve_ended_periods"  # quarantine kind "alert"
RESOLVE_SETTLED = "alerts.resolve_settled_invoices"  # quarantine kind "alert"
OVERDUE = "alerts.invoice_overdue"  # quarantine kind "invoice"
CREDIT = "alerts.credit_balance"  # quarantine kind "customer" (its external id)


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


# --- credit balances that fell with no event ---------------------------------------------


async def claim_credit(
    tx: Tx, only: Sequence[Item] | None, *, after: tuple[str, str] | None
) -> list[tuple[str, str]]:
    """The next customers (tenant, external id) after ``after`` that have a credit grant
    and a credit balance rule looking at them."""
    pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
    return await tx.repo(CreditAlertsRepository).credit_sweep(
        service.CREDIT_KINDS, SWEEP_LIMIT, after if only is None else None, job=CREDIT, only=pairs
    )


async def evaluate_claimed(tx: Tx, customers: Sequence[tuple[str, str]], *, now: datetime) -> int:
    """``evaluate_credit`` on these customers as of ``now``: a balance that fell below a
    threshold with no event saying so (a new subscription's flat fee, a new period, a grant
    past its expiry before the expiry job wrote it) raises its crossing's alert here, once."""
    found = await evaluate_credit(tx, customers, now)
    publish(tx, found)
    return len(found)


@dataclass
class CreditCursor:
    """Where the pass over the watched customers is: the last (tenant, external id) a
    committed chunk looked at; None: the next chunk starts a new pass."""

    after: tuple[str, str] | None = None

    async def step(self, jobs: Jobs, now: datetime) -> int:
        """One chunk of the pass; returns how many customers it claimed. The cursor moves
        once the chunk is done (committed, or its failing customer quarantined), so a
        retried transaction claims the same chunk again; a short chunk ends the pass."""
        last: list[tuple[str, str]] = []

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[tuple[str, str]]:
            found = await claim_credit(tx, only, after=self.after)
            if only is None:
                last[:] = found[-1:]
            return found

        step = await jobs.claimed(CREDIT, claim, _customer, partial(evaluate_claimed, now=now))
        self.after = last[0] if step.claimed >= SWEEP_LIMIT and last else None
        return step.claimed


# --- the tick ----------------------------------------------------------------------------


def _alert(a: tuple[str, str] | tuple[str, str, str]) -> Item:
    return Item(a[0], "alert", a[1])


def _invoice(i: OverdueInvoice) -> Item:
    return Item(i.tenant_id, "invoice", i.invoice_id)


def _customer(c: tuple[str, str]) -> Item:
    return Item(c[0], "customer", c[1])


@dataclass(frozen=True)
class Sweep:
    jobs: Jobs
    clock: Clock = utc_now
    credit: CreditCursor = field(default_factory=CreditCursor)

    async def tick(self) -> bool:
        """One chunk of each part; True when a part claimed a full chunk (more is due: for
        the credit balances, the rest of the pass)."""
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
        credit = await self.credit.step(self.jobs, now)
        return max(credit, *(s.claimed for s in steps)) >= SWEEP_LIMIT

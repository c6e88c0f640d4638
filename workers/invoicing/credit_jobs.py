"""Credit jobs, on the invoicing worker's job loop: grants expire (what is left goes at
exactly ``expires_at``, rolling over where the grant says so), commitments whose term is over
are trued up, and automatic top-ups buy credit when a customer's projected balance falls
below its threshold, once per crossing.
Each chunk is one transaction; a grant or customer that fails for good is quarantined and
the others go on (bulkheads, ADR 0044)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog

from schemas.envelope import new_id
from storage.invoicing import InvoicingRepository
from storage.invoicing.credits import AutoTopUp, Commitment, CreditGrant, CreditRepository
from workers.invoicing import ledger, views
from workers.invoicing.credit_views import credit_balances
from workers.runtime import Item, Jobs, Tx

log = structlog.get_logger("billstream.invoicing.credits")

CREDITS = "invoicing.credits"  # the job loop
EXPIRE = "invoicing.credit_expiry"
TRUE_UP = "invoicing.commitment_true_up"
AUTO_TOP_UP = "invoicing.auto_top_up"


def _grant(g: CreditGrant) -> Item:
    return Item(g.tenant_id, "credit_grant", g.id)


def _commitment(c: Commitment) -> Item:
    return Item(c.tenant_id, "commitment", c.id)


def _auto(a: AutoTopUp) -> Item:
    return Item(a.tenant_id, "customer", a.customer_id)


class CreditJobs:
    def __init__(self, jobs: Jobs, chunk: int) -> None:
        self.jobs = jobs
        self.chunk = chunk

    async def tick(self) -> bool:
        now = datetime.now(UTC)
        await self.expire(now)
        await self.true_up(now)
        await self.auto_top_up(now)
        return False

    async def true_up(self, now: datetime) -> int:
        """Settle every commitment whose term is over and whose invoices are final."""

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[Commitment]:
            return await tx.repo(CreditRepository).commitments_due(
                now,
                self.chunk,
                job=TRUE_UP,
                only=None if only is None else [(i.tenant_id, i.id) for i in only],
            )

        async def apply(tx: Tx, rows: Sequence[Commitment]) -> int:
            return await ledger.true_up(tx, rows, now)

        done = 0
        while (step := await self.jobs.claimed(TRUE_UP, claim, _commitment, apply)).claimed:
            done += step.applied
        return done

    async def expire(self, now: datetime) -> int:
        """Expire every grant whose expiry has come by ``now``; returns how many."""

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[CreditGrant]:
            return await tx.repo(CreditRepository).expiring(
                now,
                self.chunk,
                job=EXPIRE,
                only=None if only is None else [(i.tenant_id, i.id) for i in only],
            )

        async def apply(tx: Tx, grants: Sequence[CreditGrant]) -> int:
            return await ledger.expire(tx, grants, now)

        done = 0
        while (step := await self.jobs.claimed(EXPIRE, claim, _grant, apply)).claimed:
            done += step.applied
        if done:
            log.info("credit grants expired", count=done)
        return done

    async def auto_top_up(self, now: datetime) -> int:
        """Top up every customer whose projected balance fell below its threshold since its
        last top-up; returns how many top-ups were issued."""
        after: tuple[str, str] | None = None  # moves once a chunk is done (a retry re-reads it)
        last: tuple[str, str] | None = None

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[AutoTopUp]:
            nonlocal last
            rows = await tx.repo(CreditRepository).claim_auto_top_ups(
                self.chunk,
                None if only is not None else after,
                job=AUTO_TOP_UP,
                only=None if only is None else [(i.tenant_id, i.id) for i in only],
            )
            if only is None and rows:
                last = (rows[-1].tenant_id, rows[-1].customer_id)
            return rows

        async def apply(tx: Tx, rows: Sequence[AutoTopUp]) -> int:
            return await top_up_below_threshold(tx, rows, now)

        issued = 0
        while (step := await self.jobs.claimed(AUTO_TOP_UP, claim, _auto, apply)).claimed:
            issued += step.applied
            after = last
        return issued


async def top_up_below_threshold(tx: Tx, rows: Sequence[AutoTopUp], now: datetime) -> int:
    """For each automatic top-up (claimed, locked): armed and the projected balance below
    its threshold, buy its amount of credit and disarm; disarmed and at or above it again,
    arm."""
    repo = tx.repo(CreditRepository)
    invoicing = tx.repo(InvoicingRepository)
    customers = await invoicing.customers({r.customer_id for r in rows})
    balances = await credit_balances(tx, [customers[r.customer_id] for r in rows], now)
    issued = 0
    for row, balance in zip(rows, balances, strict=True):
        below = balance.projected < row.threshold
        if not below:
            if not row.armed:
                await repo.arm(row, True)
            continue
        if not row.armed:
            continue
        customer = customers[row.customer_id]
        await repo.lock_customers([customer.id])
        grant = await repo.add_grant(
            tenant_id=row.tenant_id,
            id=f"auto-{new_id()}",
            customer_id=customer.id,
            currency=customer.currency,
            amount=row.amount,
            source="purchased",
            priority=row.priority,
            effective_at=now,
            expires_at=(
                now + timedelta(days=row.expires_after_days) if row.expires_after_days else None
            ),
            scope=None,
            rollover=None,
            purchase_amount=row.purchase_amount,
            invoice_id=None,
            rolled_over_from=None,
            description="Automatic top-up",
        )
        assert grant is not None
        config = views.config_of(await invoicing.config(row.tenant_id))
        invoice_id = await ledger.issue_top_up(tx, grant, customer, config, now, None)
        await repo.set_invoice(grant, invoice_id)
        await repo.arm(row, False, fired=True)
        issued += 1
        log.info(
            "automatic top-up",
            tenant=row.tenant_id,
            customer=customer.external_id,
            projected=balance.projected,
            threshold=row.threshold,
            invoice_id=invoice_id,
        )
    return issued

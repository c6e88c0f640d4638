"""Billing runs: closing ended periods into draft invoices, finalizing drafts, and the runs
tenants request (``RunBilling``), each step one transaction run by ``runtime.jobs``.

Steps work in chunks, claiming rows with ``FOR UPDATE SKIP LOCKED``: several replicas share
the work and a crash (kill -9) rolls back only the chunk in flight, which the next run does
again. A period is invoiced once (unique per subscription and period start); a draft
finalizes once (its status is checked under the row lock). Invoice events go to the outbox
in the same transaction. A subscription, draft or requested run that fails for good is
quarantined and the others are billed (bulkheads, ADR 0044).

Who runs them — requested runs held by one replica and helped by the others, then the
periodic run — is ``scheduler.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from schemas import topics
from schemas.envelope import CloudEvent, new_id
from schemas.invoicing import (
    InvoiceCreated,
    InvoiceData,
    InvoicingConfig,
    SubscriptionEnded,
    SubscriptionUpdated,
)
from storage.invoicing import (
    Customer,
    Invoice,
    InvoicingConfigRow,
    InvoicingRepository,
    Plan,
    Subscription,
)
from storage.invoicing.late_usage import LateUsageRepository
from storage.invoicing.runs import HeldRun
from workers.invoicing import finalizing, late_usage, lifecycle, service, taxing, trials, views
from workers.invoicing.discounting import Discounts
from workers.invoicing.late_usage import ADJUSTMENT
from workers.invoicing.ledger import Wallet
from workers.invoicing.lines import (
    PLANS,
    InvoiceMaker,
    Plans,
    line_values,
    of_subscription,
    rolled_up,
)
from workers.runtime import Item, Jobs, Tx
from workers.runtime.jobs import Apply, Claim

log = structlog.get_logger("billstream.invoicing")

T = TypeVar("T")

BILLING = "invoicing.billing"  # the job loop: requested runs, then the periodic run
CLOSE_PERIODS = "invoicing.close_periods"
FINALIZE = "invoicing.finalize"
REQUESTED_RUNS = "invoicing.requested_runs"

# what closing a period changes of a subscription (written back in one statement)
SUB_STATE = (
    "tenant_id", "id", "plan_id", "next_plan_id", "status", "anchor", "period_index",
    "current_period_start", "current_period_end", "ended_at", "period_proration",
)  # fmt: skip
_STATE_FIELDS = tuple(f.name for f in fields(lifecycle.SubscriptionState))

# a draft to create: tenant, subscription id, customer, plan, period start, end, proration
# (the share of the flat fees billed), whether its usage is billed (not: a trial's)
Draft = tuple[str, str, Customer, Plan, datetime, datetime, Decimal, bool]


def _emit(tx: Tx, event: CloudEvent, tenant_id: str, customer: str) -> None:
    tx.emit(event, topic=topics.EVENTS_INVOICING, key=topics.partition_key(tenant_id, customer))


async def create_drafts(
    tx: Tx,
    drafts: Sequence[Draft],
    configs: dict[str, InvoicingConfigRow],
    usage_offsets: dict[str, int] | None = None,
    plans: Plans = PLANS,
) -> int:
    """Insert draft invoices with their lines from the usage known now; emits
    ``invoice.created`` for each period not invoiced before. Returns how many were created.
    (Closing periods does this, and so does cancelling a subscription at once.)"""
    if not drafts:
        return 0
    settings: dict[str, InvoicingConfig] = {
        t: views.config_of(configs.get(t)) for t in {d[0] for d in drafts}
    }
    sections = await rolled_up(tx, {d[2].id for d in drafts})
    contexts = [
        (
            tenant,
            service.InvoiceContext(
                plan=plans.spec(plan),
                subject=customer.external_id,
                currency=plan.currency,
                period_start=start,
                period_end=end,
                proration=proration,
                rounding=settings[tenant].rounding,
                usage_billed=usage_billed,
                sections=sections.get(customer.id, ()),
            ),
        )
        for tenant, _, customer, plan, start, end, proration, usage_billed in drafts
    ]
    all_lines = await InvoiceMaker(tx, plans).lines(contexts)
    books = await taxing.books(tx, settings)
    invoices: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    data: dict[str, InvoiceData] = {}
    for (tenant, sub_id, customer, plan, start, end, proration, _), (_, ctx), plan_lines in zip(
        drafts, contexts, all_lines, strict=True
    ):
        party, book = taxing.party(customer), books[tenant]
        plan_lines = book.resolve(plan_lines, party)
        t = service.totals(plan_lines, book.taxation(party), ctx.currency, ctx.rounding)
        plan_lines = service.with_taxes(plan_lines, t)
        row: dict[str, Any] = {
            "id": new_id(),
            "tenant_id": tenant,
            "customer_id": customer.id,
            "subscription_id": sub_id,
            "plan_id": plan.id,
            "status": "draft",
            "number": None,
            "currency": ctx.currency,
            "period_start": start,
            "period_end": end,
            "proration": proration,
            "usage_billed": ctx.usage_billed,
            "subtotal": t.subtotal,
            "tax": t.tax,
            "tax_inclusive": t.tax_inclusive,
            "tax_breakdown": [a.json for a in t.computed.breakdown],
            "total": t.total,
            "amount_paid": 0,
            "tax_rate": party.tax_rate,
            "rounding": ctx.rounding,
            "finalize_after": end + timedelta(hours=settings[tenant].grace_period_hours),
            "usage_offsets": usage_offsets,
        }
        invoices.append(row)
        lines += line_values(row["id"], tenant, plan_lines)
        data[row["id"]] = service.invoice_data(
            row,
            customer.external_id,
            [ln.model() for ln in plan_lines],
            breakdown=[a.model() for a in t.computed.breakdown],
        )
    inserted = await tx.repo(InvoicingRepository).insert_invoices(invoices, lines)
    for row in invoices:
        if row["id"] in inserted:
            view = data[row["id"]]
            event = service.invoice_event(InvoiceCreated, view, tenantid=row["tenant_id"])
            _emit(tx, event, row["tenant_id"], view.customer)
    return len(inserted)


@dataclass
class RunResult:
    invoices_created: int = 0
    invoices_finalized: int = 0
    drafts_waiting: int = 0


def _subscription(sub: Subscription) -> Item:
    return Item(sub.tenant_id, "subscription", sub.id)


def _invoice(invoice: Invoice) -> Item:
    return Item(invoice.tenant_id, "invoice", invoice.id)


class Billing:
    """One billing run as of a time: close the periods it ended, then finalize the drafts
    that are due, chunk by chunk."""

    def __init__(
        self,
        jobs: Jobs,
        *,
        chunk: int,
        lookback: timedelta,
        plans: Plans = PLANS,
        parallel: int = 1,
    ) -> None:
        self.jobs = jobs
        self.chunk = chunk
        self.lookback = lookback
        self.plans = plans
        self.parallel = parallel

    async def _drain(
        self,
        job: str,
        claim: Claim[T],
        item_of: Callable[[T], Item],
        apply: Apply[T],
    ) -> int:
        """Claimed chunks of ``job`` until none is left, ``parallel`` of them at a time (each
        in its own transaction; SKIP LOCKED keeps them apart, as it does replicas): while
        one chunk waits for PostgreSQL, the next is computed. Returns the sum applied."""

        async def one() -> int:
            applied = 0
            while (step := await self.jobs.claimed(job, claim, item_of, apply)).claimed:
                applied += step.applied
            return applied

        if self.parallel == 1:
            return await one()
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one()) for _ in range(self.parallel)]
        return sum(t.result() for t in tasks)

    async def run(
        self,
        as_of: datetime,
        tenant_id: str | None,
        usage_ends: dict[int, int],
        metering_committed: dict[int, int],
        requested: HeldRun | None = None,
    ) -> RunResult:
        """Close every period ended by ``as_of`` and finalize the drafts that are due and
        whose period's usage metering has applied (its committed offsets reached the usage
        topic's end offsets as they were when the period was closed). ``requested``: the
        requested run this is (held or helped): each chunk adds what it created and
        finalized to the run's counts in its own transaction, so they stay exact whichever
        replica worked it and whatever crashed.

        A subscription or draft that fails (its data cannot be billed) is quarantined and
        the others are billed (bulkheads, ADR 0044)."""
        result = RunResult()

        async def count(tx: Tx, created: int, finalized: int) -> None:
            if requested is not None:
                await tx.repo(InvoicingRepository).count_on_run(
                    requested.tenant_id, requested.id, created=created, finalized=finalized
                )

        await trials.notify(self.jobs, as_of, tenant_id, self.chunk)  # trial_will_end

        async def claim_due(tx: Tx, only: Sequence[Item] | None) -> list[Subscription]:
            return await tx.repo(InvoicingRepository).claim_due(
                as_of,
                tenant_id,
                self.chunk,
                job=CLOSE_PERIODS,
                only=None if only is None else [(i.tenant_id, i.id) for i in only],
            )

        # the drafts it closes are stamped with the usage topic's ends as of the run's start
        # (what the snapshot below gives the drafts of other paths): no second write of each
        offsets = {str(p): o for p, o in usage_ends.items()}

        async def close(tx: Tx, subs: Sequence[Subscription]) -> int:
            created = await self.close(tx, subs, as_of, offsets)
            await count(tx, created, 0)
            return created

        result.invoices_created += await self._drain(CLOSE_PERIODS, claim_due, _subscription, close)

        async def claim_ended(tx: Tx, only: Sequence[Item] | None) -> list[Subscription]:
            return await tx.repo(LateUsageRepository).claim_ended(
                as_of,
                tenant_id,
                self.chunk,
                job=late_usage.LATE_USAGE,
                only=None if only is None else [(i.tenant_id, i.id) for i in only],
            )

        async def draft(tx: Tx, subs: Sequence[Subscription]) -> int:
            return await late_usage.draft(tx, subs, as_of, self.lookback)

        while (
            await self.jobs.claimed(late_usage.LATE_USAGE, claim_ended, _subscription, draft)
        ).claimed:
            pass

        drafted = result.invoices_created
        await self.jobs.run(
            "invoicing.snapshot",
            lambda tx: tx.repo(InvoicingRepository).snapshot_offsets(usage_ends, drafted),
        )

        async def claim_finalizable(tx: Tx, only: Sequence[Item] | None) -> list[Invoice]:
            return await tx.repo(InvoicingRepository).claim_finalizable(
                as_of,
                tenant_id,
                metering_committed,
                self.chunk,
                job=FINALIZE,
                only=None if only is None else [i.id for i in only],
            )

        async def finalize(tx: Tx, drafts: Sequence[Invoice]) -> int:
            finalized = await self.finalize(tx, drafts, as_of)
            await count(tx, 0, finalized)
            return finalized

        async def finalizable_left(tx: Tx) -> bool:
            return bool(
                await tx.repo(InvoicingRepository).claim_finalizable(
                    as_of, tenant_id, metering_committed, 1, job=FINALIZE, wait=True
                )
            )

        # A claim skips the drafts another replica holds locked: its chunk in flight, or its
        # snapshot of the drafts' offsets (one statement over every draft, seconds at
        # 100,000) — then this replica's drain ends with nothing claimed while the run is far
        # from done. So it waits for those locks and drains again, for as long as a draft is
        # left and it gets some of them (issue 22: one replica of two sat out the phase).
        result.invoices_finalized += await self._drain(
            FINALIZE, claim_finalizable, _invoice, finalize
        )
        while await self.jobs.run("invoicing.finalizable", finalizable_left):
            more = await self._drain(FINALIZE, claim_finalizable, _invoice, finalize)
            if not more:  # what was left, other replicas took
                break
            result.invoices_finalized += more
        result.drafts_waiting = await self.jobs.run(
            "invoicing.drafts_waiting",
            lambda tx: tx.repo(InvoicingRepository).drafts_waiting(tenant_id, as_of),
        )
        return result

    # --- closing periods ---------------------------------------------------------------

    async def close(
        self,
        tx: Tx,
        subs: Sequence[Subscription],
        as_of: datetime,
        usage_offsets: dict[str, int] | None = None,
    ) -> int:
        """Draft invoices for the ended periods of ``subs`` (claimed, locked), with
        ``usage_offsets`` (or none yet: a snapshot gives them); returns how many were
        created."""
        repo = tx.repo(InvoicingRepository)
        plans = await repo.plans(
            {s.plan_id for s in subs} | {s.next_plan_id for s in subs if s.next_plan_id}
        )
        customers = await repo.customers({s.customer_id for s in subs})
        configs = await repo.configs({s.tenant_id for s in subs})

        def interval(plan_id: str) -> str:
            return self.plans.spec(plans[plan_id]).interval

        states = [
            lifecycle.SubscriptionState(**{f: getattr(s, f) for f in _STATE_FIELDS}) for s in subs
        ]
        drafts: list[Draft] = []
        for sub in states:
            customer = customers[sub.customer_id]
            while sub.status == "active" and sub.current_period_end <= as_of:
                drafts.append(
                    (
                        sub.tenant_id, sub.id, customer, plans[sub.plan_id],
                        sub.current_period_start, sub.current_period_end, sub.flat_share(),
                        sub.usage_billed(),
                    )
                )  # fmt: skip
                changed = lifecycle.advance(sub, interval)
                if changed is not None:
                    cls = SubscriptionEnded if changed == "ended" else SubscriptionUpdated
                    data = views.subscription_data(sub, customer.external_id, plans)
                    event = service.subscription_event(cls, data, tenantid=sub.tenant_id)
                    _emit(tx, event, sub.tenant_id, customer.external_id)
        await repo.update_subscriptions([{c: getattr(s, c) for c in SUB_STATE} for s in states])
        return await create_drafts(tx, drafts, configs, usage_offsets, plans=self.plans)

    # --- finalizing drafts -----------------------------------------------------------

    async def finalize(self, tx: Tx, drafts: Sequence[Invoice], as_of: datetime) -> int:
        """Finalize ``drafts`` (claimed, locked): number them, recompute their lines with
        late-usage adjustments; returns how many. An ended subscription's adjustment draft
        with no late usage is dropped instead (it never had a number or an event)."""
        repo = tx.repo(InvoicingRepository)
        plans = await repo.plans({of_subscription(d)[1] for d in drafts})
        customers = await repo.customers({d.customer_id for d in drafts})
        maker = InvoiceMaker(tx, self.plans)
        late = await maker.adjustments(drafts, as_of - self.lookback, plans)
        dropped = [d.id for d in drafts if d.kind == ADJUSTMENT and not late[d.id]]
        await repo.delete_drafts(dropped)
        drafts = [d for d in drafts if d.id not in dropped]
        # the customers billed in its sections, read again: the tree may have changed since
        # the draft was created (its lines are recomputed, as its usage is)
        sections = await rolled_up(tx, {d.customer_id for d in drafts if d.kind != ADJUSTMENT})
        contexts = [
            (
                d.tenant_id,
                service.InvoiceContext(
                    plan=self.plans.spec(plans[of_subscription(d)[1]]),
                    subject=customers[d.customer_id].external_id,
                    currency=d.currency,
                    period_start=d.period_start,
                    period_end=d.period_end,
                    proration=d.proration,
                    rounding=d.rounding,
                    usage_billed=d.usage_billed,
                    sections=sections.get(d.customer_id, ()),
                ),
            )
            for d in drafts
            if d.kind != ADJUSTMENT  # late usage only: no plan lines of its own
        ]
        computed = iter(await maker.lines(contexts))
        all_lines = [[] if d.kind == ADJUSTMENT else next(computed) for d in drafts]
        configs = await repo.configs({d.tenant_id for d in drafts})
        settings = {t: views.config_of(configs.get(t)) for t in {d.tenant_id for d in drafts}}
        books = await taxing.books(tx, settings, share=True)
        discounts = await Discounts.open(tx, drafts, as_of)
        wallet = await Wallet.open(tx, {d.customer_id for d in drafts}, as_of)
        settled: list[finalizing.Settled] = []
        new_lines: list[dict[str, Any]] = []
        for d, plan_lines in zip(drafts, all_lines, strict=True):
            row = views.values(d)
            lines = plan_lines + late[d.id]
            lines += discounts.lines(row, lines)
            s = finalizing.prepare(
                row, lines, customers[d.customer_id], settings[d.tenant_id], as_of, wallet,
                books[d.tenant_id],
            )  # fmt: skip
            settled.append(s)
            new_lines += line_values(d.id, d.tenant_id, s.lines)
        # the numbers last: a tenant's counter row stays locked until the transaction
        # commits, and replicas finalizing chunks at once wait for it in turn
        numbers: dict[str, int] = {}
        for tenant in sorted({d.tenant_id for d in drafts}):
            count = sum(1 for d in drafts if d.tenant_id == tenant)
            numbers[tenant] = await repo.next_numbers(tenant, as_of.year, count)
        changes: list[dict[str, Any]] = []
        for d, s in zip(drafts, settled, strict=True):
            prefix = settings[d.tenant_id].number_prefix
            number = service.invoice_number(prefix, as_of.year, numbers[d.tenant_id])
            numbers[d.tenant_id] += 1
            changes.append(s.numbered(tx, number, tenantid=d.tenant_id))
        await repo.replace_lines([d.id for d in drafts], new_lines)
        await repo.update_invoices(changes)
        await taxing.mark_used(tx, books, as_of)
        await wallet.write(tx, customers)
        await discounts.write(tx)
        return len(drafts)

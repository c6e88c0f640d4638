"""Billing runs: closing ended periods into draft invoices and finalizing drafts.

Both work in chunks, one transaction per chunk, claiming rows with ``FOR UPDATE SKIP
LOCKED``: several replicas share the work and a crash (kill -9) rolls back only the chunk
in flight, which the next run does again. A period is invoiced once (unique per
subscription and period start); a draft finalizes once (its status is checked under the
row lock). Invoice events go to the outbox in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from schemas import topics
from schemas.envelope import CloudEvent, new_id
from schemas.invoicing import (
    InvoiceCreated,
    InvoiceData,
    InvoiceFinalized,
    InvoiceLine,
    InvoicePaid,
    SubscriptionData,
    SubscriptionEnded,
    SubscriptionUpdated,
    TierLine,
)
from schemas.pricing import FlatPrice, PlanSpec
from storage import outbox
from storage.db import AsyncSession
from storage.invoicing import (
    INVOICE_COLUMNS,
    Customer,
    Invoice,
    InvoiceLineRow,
    InvoicingConfigRow,
    InvoicingRepository,
    Plan,
    Subscription,
)
from storage.metering import MeterRepository, PeriodKey, UsageRepository
from workers.invoicing import service
from workers.runtime.jobs import Item, Jobs
from workers.runtime.tx import Tx, outgoing

log = structlog.get_logger("billstream.invoicing")

SOURCE = "billstream/invoicing"
SUB_STATE = (
    "tenant_id", "id", "plan_id", "next_plan_id", "status", "anchor", "period_index",
    "current_period_start", "current_period_end", "ended_at",
)  # fmt: skip
FINALIZED = (
    "id", "status", "number", "subtotal", "tax", "total", "tax_rate", "finalized_at",
    "due_at", "paid_at",
)  # fmt: skip
DEFAULT_CONFIG = {"rounding": "half_even", "grace_period_hours": 1, "number_prefix": "INV"}


def customer_key(tenant_id: str, external_id: str) -> str:
    return f"{tenant_id}:{external_id}"


class Plans:
    """Parsed plan specs by plan id (plans are immutable, so this never goes stale)."""

    def __init__(self) -> None:
        self._specs: dict[str, PlanSpec] = {}

    def spec(self, plan: Plan) -> PlanSpec:
        if plan.id not in self._specs:
            self._specs[plan.id] = PlanSpec.model_validate(plan.spec)
        return self._specs[plan.id]


def config_of(configs: dict[str, InvoicingConfigRow], tenant_id: str) -> dict[str, Any]:
    row = configs.get(tenant_id)
    if row is None:
        return dict(DEFAULT_CONFIG)
    return {k: getattr(row, k) for k in DEFAULT_CONFIG}


def subscription_data(sub: Subscription, customer: str, plans: dict[str, Plan]) -> SubscriptionData:
    return SubscriptionData(
        subscription_id=sub.id,
        customer=customer,
        plan=plans[sub.plan_id].key,
        status="ended" if sub.status == "ended" else "active",
        start=sub.start,
        current_period_start=sub.current_period_start,
        current_period_end=sub.current_period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        next_plan=plans[sub.next_plan_id].key if sub.next_plan_id else None,
        ended_at=sub.ended_at,
    )


def line_values(
    invoice_id: str, tenant_id: str, lines: Sequence[service.Line]
) -> list[dict[str, Any]]:
    return [
        {
            "invoice_id": invoice_id,
            "position": i,
            "tenant_id": tenant_id,
            "price_key": ln.price_key,
            "kind": ln.kind,
            "description": ln.description,
            "meter": ln.meter,
            "subject": ln.subject,
            "period_start": ln.period_start,
            "period_end": ln.period_end,
            "quantity": ln.quantity,
            "unit_price": ln.unit_price,
            "tiers": [TierLine.model_validate(vars(p)).model_dump(mode="json") for p in ln.tiers],
            "proration": ln.proration,
            "minimum_applied": ln.minimum_applied,
            "amount": ln.amount,
            "adjustment_for": ln.adjustment_for,
        }
        for i, ln in enumerate(lines)
    ]


def values(invoice: Invoice) -> dict[str, Any]:
    return {c: getattr(invoice, c) for c in INVOICE_COLUMNS}


def line_models(rows: Iterable[InvoiceLineRow]) -> list[InvoiceLine]:
    return [
        InvoiceLine.model_validate(
            {c: getattr(r, c) for c in InvoiceLine.model_fields if c != "tiers"}
            | {"tiers": r.tiers}
        )
        for r in rows
    ]


@dataclass
class Work:
    """One transaction and the outbox messages it emits (a consumer passes its ``Tx``'s list,
    so a failed command's events are dropped with it)."""

    session: AsyncSession
    events: list[outbox.OutgoingMessage] = field(default_factory=list)

    def emit(self, event: CloudEvent, key: str) -> None:
        self.events.append(outgoing(event, topic=topics.EVENTS_INVOICING, key=key))


class InvoiceMaker:
    """Computes invoice lines from plans and the metering read model, set-based."""

    def __init__(self, session: AsyncSession, plans: Plans) -> None:
        self.session = session
        self.plans = plans
        self.meters = MeterRepository(session)
        self.usage = UsageRepository(session)

    async def _values(
        self, wanted: Sequence[tuple[str, str, str, datetime, datetime]]
    ) -> list[Decimal | None]:
        """Usage of (tenant, meter key, subject, start, end) each; None for unknown meters."""
        meters = await self.meters.by_keys({(t, m) for t, m, *_ in wanted})
        keys: list[PeriodKey] = []
        where: list[int] = []
        for i, (t, m, subject, start, end) in enumerate(wanted):
            if (t, m) in meters:
                keys.append(PeriodKey(meters[(t, m)], subject, start, end))
                where.append(i)
        found = await self.usage.period_totals(keys)
        values: list[Decimal | None] = [None] * len(wanted)
        for i, v in zip(where, found, strict=True):
            values[i] = v
        return values

    async def lines(
        self, contexts: Sequence[tuple[str, service.InvoiceContext]]
    ) -> list[list[service.Line]]:
        """The plan lines of each (tenant, context), usage read in one go."""
        wanted: list[tuple[str, str, str, datetime, datetime]] = []
        for tenant, ctx in contexts:
            start, end = service.usage_window(ctx.period_start, ctx.period_end)
            for price in service.metered_prices(ctx.plan):
                wanted.append((tenant, price.meter, ctx.subject, start, end))
        values = iter(await self._values(wanted))
        out: list[list[service.Line]] = []
        for _, ctx in contexts:
            usage = {p.meter: next(values) for p in service.metered_prices(ctx.plan)}
            out.append(service.invoice_lines(ctx, usage))
        return out

    async def adjustments(
        self, drafts: Sequence[Invoice], since: datetime, plans: dict[str, Plan]
    ) -> dict[str, list[service.Line]]:
        """Late-usage lines for each draft: every earlier issued period of its subscription
        (within the look-back) whose usage changed since it was billed."""
        repo = InvoicingRepository(self.session)
        history = await repo.billed_history(
            [(d.tenant_id, d.subscription_id) for d in drafts], since
        )
        known = {p.id: p for p in plans.values()}
        missing = {inv.plan_id for inv, _ in history} - set(known)
        known |= await repo.plans(missing)
        billed: dict[tuple[str, str, str, datetime], service.Billed] = {}
        for inv, ln in history:
            key = (inv.tenant_id, inv.subscription_id, ln.price_key, ln.period_start)
            if key not in billed:
                spec = self.plans.spec(known[inv.plan_id])
                price = next((p for p in spec.prices if p.key == ln.price_key), None)
                if price is None or isinstance(price, FlatPrice):
                    continue
                ctx = service.InvoiceContext(
                    plan=spec,
                    subject=ln.subject or "",
                    currency=inv.currency,
                    period_start=inv.period_start,
                    period_end=inv.period_end,
                    proration=inv.proration,
                    rounding=inv.rounding,
                )
                billed[key] = service.Billed(ctx, price, ln.period_start, ln.period_end)
            billed[key].quantity += ln.quantity
            billed[key].amount += ln.amount
        entries = list(billed.items())
        current = await self._values(
            [(k[0], b.price.meter, b.ctx.subject, b.start, b.end) for k, b in entries]
        )
        by_sub: dict[tuple[str, str], list[tuple[service.Billed, Decimal | None]]] = {}
        for (k, b), v in zip(entries, current, strict=True):
            by_sub.setdefault((k[0], k[1]), []).append((b, v))
        out: dict[str, list[service.Line]] = {}
        for d in drafts:
            pairs = sorted(
                by_sub.get((d.tenant_id, d.subscription_id), []), key=lambda p: p[0].start
            )
            out[d.id] = service.adjustments(
                [b for b, _ in pairs], [v for _, v in pairs], d.currency
            )
        return out


@dataclass
class RunResult:
    invoices_created: int = 0
    invoices_finalized: int = 0
    drafts_waiting: int = 0


CLOSE_PERIODS = "invoicing.close_periods"
FINALIZE = "invoicing.finalize"


def _subscription(sub: Subscription) -> Item:
    return Item(sub.tenant_id, "subscription", sub.id)


def _invoice(invoice: Invoice) -> Item:
    return Item(invoice.tenant_id, "invoice", invoice.id)


class Billing:
    def __init__(self, jobs: Jobs, *, chunk: int, lookback: timedelta) -> None:
        self.jobs = jobs
        self.chunk = chunk
        self.lookback = lookback
        self.plans = Plans()

    async def run(
        self,
        as_of: datetime,
        tenant_id: str | None,
        usage_ends: dict[int, int],
        metering_committed: dict[int, int],
    ) -> RunResult:
        """Close every period ended by ``as_of`` and finalize the drafts that are due and
        whose period's usage metering has applied (its committed offsets reached the usage
        topic's end offsets as they were when the period was closed).

        A subscription or draft that fails (its data cannot be billed) is quarantined and
        the others are billed (bulkheads, ADR 0044)."""
        result = RunResult()

        async def claim_due(tx: Tx, only: Sequence[Item] | None) -> list[Subscription]:
            return await InvoicingRepository(tx.session).claim_due(
                as_of,
                tenant_id,
                self.chunk,
                job=CLOSE_PERIODS,
                only=None if only is None else [(i.tenant_id, i.id) for i in only],
            )

        async def close(tx: Tx, subs: Sequence[Subscription]) -> int:
            return await self.close(Work(tx.session, tx.outgoing), subs, as_of)

        while (
            step := await self.jobs.claimed(CLOSE_PERIODS, claim_due, _subscription, close)
        ).claimed:
            result.invoices_created += step.applied

        await self.jobs.run(
            "invoicing.snapshot",
            lambda tx: InvoicingRepository(tx.session).snapshot_offsets(usage_ends),
        )

        async def claim_finalizable(tx: Tx, only: Sequence[Item] | None) -> list[Invoice]:
            return await InvoicingRepository(tx.session).claim_finalizable(
                as_of,
                tenant_id,
                metering_committed,
                self.chunk,
                job=FINALIZE,
                only=None if only is None else [i.id for i in only],
            )

        async def finalize(tx: Tx, drafts: Sequence[Invoice]) -> int:
            return await self.finalize(Work(tx.session, tx.outgoing), drafts, as_of)

        while (
            step := await self.jobs.claimed(FINALIZE, claim_finalizable, _invoice, finalize)
        ).claimed:
            result.invoices_finalized += step.applied
        result.drafts_waiting = await self.jobs.run(
            "invoicing.drafts_waiting",
            lambda tx: InvoicingRepository(tx.session).drafts_waiting(tenant_id, as_of),
        )
        return result

    # --- closing periods ---------------------------------------------------------------

    async def close(self, work: Work, subs: Sequence[Subscription], as_of: datetime) -> int:
        """Draft invoices for the ended periods of ``subs`` (claimed, locked); returns how
        many subscriptions were closed."""
        repo = InvoicingRepository(work.session)
        plans = await repo.plans(
            {s.plan_id for s in subs} | {s.next_plan_id for s in subs if s.next_plan_id}
        )
        customers = await repo.customers({s.customer_id for s in subs})
        configs = await repo.configs({s.tenant_id for s in subs})
        drafts: list[tuple[Subscription, Plan, datetime, datetime]] = []
        work.session.expunge_all()  # changed below, written back in one statement
        for sub in subs:
            while sub.status == "active" and sub.current_period_end <= as_of:
                drafts.append(
                    (sub, plans[sub.plan_id], sub.current_period_start, sub.current_period_end)
                )
                self._advance(work, sub, customers[sub.customer_id], plans)
        await repo.update_subscriptions([{c: getattr(s, c) for c in SUB_STATE} for s in subs])
        await self.create_drafts(
            work,
            [
                (sub.tenant_id, sub.id, customers[sub.customer_id], plan, start, end, Decimal(1))
                for sub, plan, start, end in drafts
            ],
            configs,
        )
        return len(subs)

    def _advance(
        self, work: Work, sub: Subscription, customer: Customer, plans: dict[str, Plan]
    ) -> None:
        """Move ``sub`` past its current period: end it, switch plans, or renew."""
        key = customer_key(sub.tenant_id, customer.external_id)
        if sub.cancel_at_period_end:
            sub.status, sub.ended_at = "ended", sub.current_period_end
            work.emit(self._sub_event(SubscriptionEnded, sub, customer, plans), key)
            return
        if sub.next_plan_id:
            sub.plan_id, sub.next_plan_id = sub.next_plan_id, None
            sub.anchor, sub.period_index = sub.current_period_end, 0
        else:
            sub.period_index += 1
        interval = self.plans.spec(plans[sub.plan_id]).interval
        sub.current_period_start, sub.current_period_end = service.period(
            sub.anchor, interval, sub.period_index
        )
        if sub.period_index == 0:
            work.emit(self._sub_event(SubscriptionUpdated, sub, customer, plans), key)

    @staticmethod
    def _sub_event(
        cls: type[SubscriptionEnded] | type[SubscriptionUpdated],
        sub: Subscription,
        customer: Customer,
        plans: dict[str, Plan],
    ) -> CloudEvent:
        return cls(
            source=SOURCE,
            tenantid=sub.tenant_id,
            subject=sub.id,
            data=subscription_data(sub, customer.external_id, plans),
        )

    async def create_drafts(
        self,
        work: Work,
        drafts: Sequence[tuple[str, str, Customer, Plan, datetime, datetime, Decimal]],
        configs: dict[str, InvoicingConfigRow],
        usage_offsets: dict[str, int] | None = None,
    ) -> int:
        """Insert draft invoices (tenant, subscription, customer, plan, start, end, proration)
        with their lines from the usage known now; emits ``invoice.created`` for each period
        not invoiced before. Returns how many were created."""
        if not drafts:
            return 0
        maker = InvoiceMaker(work.session, self.plans)
        contexts = []
        for tenant, _, customer, plan, start, end, proration in drafts:
            contexts.append(
                (
                    tenant,
                    service.InvoiceContext(
                        plan=self.plans.spec(plan),
                        subject=customer.external_id,
                        currency=plan.currency,
                        period_start=start,
                        period_end=end,
                        proration=proration,
                        rounding=config_of(configs, tenant)["rounding"],
                    ),
                )
            )
        all_lines = await maker.lines(contexts)
        invoices: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        views: dict[str, InvoiceData] = {}
        for (tenant, sub_id, customer, plan, start, end, proration), (_, ctx), plan_lines in zip(
            drafts, contexts, all_lines, strict=True
        ):
            config = config_of(configs, tenant)
            tax_rate = None if customer.tax_exempt else customer.tax_rate
            t = service.totals(plan_lines, tax_rate, ctx.currency, ctx.rounding)
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
                "subtotal": t.subtotal,
                "tax": t.tax,
                "total": t.total,
                "amount_paid": 0,
                "tax_rate": tax_rate,
                "rounding": ctx.rounding,
                "finalize_after": end + timedelta(hours=config["grace_period_hours"]),
                "usage_offsets": usage_offsets,
            }
            invoices.append(row)
            lines += line_values(row["id"], tenant, plan_lines)
            views[row["id"]] = service.invoice_data(
                row, customer.external_id, [ln.model() for ln in plan_lines]
            )
        inserted = await InvoicingRepository(work.session).insert_invoices(invoices, lines)
        for row in invoices:
            if row["id"] in inserted:
                view = views[row["id"]]
                work.emit(
                    InvoiceCreated(
                        source=SOURCE, tenantid=row["tenant_id"], subject=row["id"], data=view
                    ),
                    customer_key(row["tenant_id"], view.customer),
                )
        return len(inserted)

    # --- finalizing drafts -----------------------------------------------------------

    async def finalize(self, work: Work, drafts: Sequence[Invoice], as_of: datetime) -> int:
        """Finalize ``drafts`` (claimed, locked): number them, recompute their lines with
        late-usage adjustments; returns how many."""
        repo = InvoicingRepository(work.session)
        work.session.expunge_all()  # changed below, written back in one statement
        plans = await repo.plans({d.plan_id for d in drafts})
        customers = await repo.customers({d.customer_id for d in drafts})
        maker = InvoiceMaker(work.session, self.plans)
        contexts = [
            (
                d.tenant_id,
                service.InvoiceContext(
                    plan=self.plans.spec(plans[d.plan_id]),
                    subject=customers[d.customer_id].external_id,
                    currency=d.currency,
                    period_start=d.period_start,
                    period_end=d.period_end,
                    proration=d.proration,
                    rounding=d.rounding,
                ),
            )
            for d in drafts
        ]
        all_lines = await maker.lines(contexts)
        late = await maker.adjustments(drafts, as_of - self.lookback, plans)
        configs = await repo.configs({d.tenant_id for d in drafts})
        numbers: dict[str, int] = {}
        for tenant in sorted({d.tenant_id for d in drafts}):
            count = sum(1 for d in drafts if d.tenant_id == tenant)
            numbers[tenant] = await repo.next_numbers(tenant, as_of.year, count)
        new_lines: list[dict[str, Any]] = []
        for d, plan_lines in zip(drafts, all_lines, strict=True):
            customer = customers[d.customer_id]
            lines = plan_lines + late[d.id]
            tax_rate = None if customer.tax_exempt else customer.tax_rate
            t = service.totals(lines, tax_rate, d.currency, d.rounding)
            prefix = config_of(configs, d.tenant_id)["number_prefix"]
            number = service.invoice_number(prefix, as_of.year, numbers[d.tenant_id])
            numbers[d.tenant_id] += 1
            paid = t.total <= d.amount_paid
            d.status = "paid" if paid else "finalized"
            d.number = number
            d.subtotal, d.tax, d.total, d.tax_rate = t.subtotal, t.tax, t.total, tax_rate
            d.finalized_at = as_of
            d.due_at = as_of + timedelta(days=customer.net_terms_days)
            d.paid_at = as_of if paid else None
            new_lines += line_values(d.id, d.tenant_id, lines)
            key = customer_key(d.tenant_id, customer.external_id)
            view = service.invoice_data(
                values(d), customer.external_id, [ln.model() for ln in lines], status="finalized"
            )
            work.emit(
                InvoiceFinalized(source=SOURCE, tenantid=d.tenant_id, subject=d.id, data=view),
                key,
            )
            if paid:
                work.emit(
                    InvoicePaid(
                        source=SOURCE,
                        tenantid=d.tenant_id,
                        subject=d.id,
                        data=view.model_copy(update={"status": "paid"}),
                    ),
                    key,
                )
        await repo.replace_lines([d.id for d in drafts], new_lines)
        await repo.update_invoices([{c: getattr(d, c) for c in FINALIZED} for d in drafts])
        return len(drafts)

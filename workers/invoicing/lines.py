"""Invoice lines from plans and the usage metering recorded: what a period's draft bills and
what late usage adds when it is finalized. Set-based: the usage of a whole chunk of
invoices is read in one go (the pricing itself is pure: ``service``, ``pricing``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from schemas.decimals import dump_decimal
from schemas.invoicing import TierLine
from schemas.pricing import FlatPrice, PlanSpec
from storage.invoicing import InvoicingRepository
from storage.invoicing.bulk import EncodedList
from storage.invoicing.hierarchy import HierarchyRepository
from storage.metering import MeterRepository, UsageRepository
from workers import metering
from workers.invoicing import hierarchy, pricing, service
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import Invoice, Plan


def of_subscription(invoice: Invoice) -> tuple[str, str]:
    """The subscription and plan of a subscription's invoice (every draft has both; only a
    top-up, issued finalized, has neither)."""
    assert invoice.subscription_id is not None and invoice.plan_id is not None, invoice.id
    return invoice.subscription_id, invoice.plan_id


class Plans:
    """Parsed plan specs by plan id (plans are immutable, so this never goes stale)."""

    def __init__(self) -> None:
        self._specs: dict[str, PlanSpec] = {}

    def spec(self, plan: Plan) -> PlanSpec:
        if plan.id not in self._specs:
            self._specs[plan.id] = PlanSpec.model_validate(plan.spec)
        return self._specs[plan.id]


PLANS = Plans()  # one per process: every job, command and read of this worker shares it


async def rolled_up(tx: Tx, customer_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """For each customer id: the external ids of the customers billed in sections of its
    subscription invoices (``invoice_to: parent``, transitively; docs/hierarchies.md), read
    in one query; absent when none."""
    billed = await tx.repo(HierarchyRepository).rolled_up(
        customer_ids, depth=hierarchy.MAX_DEPTH + 1
    )
    return {payer: tuple(subjects) for payer, subjects in billed.items()}


async def rolled_up_subjects(
    tx: Tx, subjects: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, ...]]:
    """``rolled_up`` by (tenant, external id)."""
    by_tenant: dict[str, set[str]] = {}
    for tenant, subject in subjects:
        by_tenant.setdefault(tenant, set()).add(subject)
    ids: dict[str, tuple[str, str]] = {}
    for tenant, wanted in by_tenant.items():
        for subject, c in (await tx.repo(HierarchyRepository).customers(tenant, wanted)).items():
            ids[c.id] = (tenant, subject)
    return {ids[c]: billed for c, billed in (await rolled_up(tx, ids)).items()}


async def payers(tx: Tx, subjects: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Who pays for each (tenant, external id) invoiced to its parent (docs/hierarchies.md):
    its usage is billed on that customer's invoices; absent for the others."""
    return await tx.repo(HierarchyRepository).payers(subjects, depth=hierarchy.MAX_DEPTH + 1)


class InvoiceMaker:
    """Computes invoice lines from plans and the metering read model, set-based."""

    def __init__(self, tx: Tx, plans: Plans = PLANS) -> None:
        self.tx = tx
        self.plans = plans
        self.meters = tx.repo(MeterRepository)
        self.usage = tx.repo(UsageRepository)

    async def _values(
        self, wanted: Sequence[tuple[str, str, str, datetime, datetime]]
    ) -> list[Decimal | None]:
        """Usage of (tenant, meter key, subject, start, end) each; None for unknown meters."""
        meters = await self.meters.by_keys({(t, m) for t, m, *_ in wanted})
        keys: list[metering.PeriodKey] = []
        where: list[int] = []
        for i, (t, m, subject, start, end) in enumerate(wanted):
            if (t, m) in meters:
                keys.append(metering.PeriodKey(meters[(t, m)], subject, start, end))
                where.append(i)
        found = await self.usage.period_totals(keys)
        values: list[Decimal | None] = [None] * len(wanted)
        for i, v in zip(where, found, strict=True):
            values[i] = v
        return values

    async def lines(
        self, contexts: Sequence[tuple[str, service.InvoiceContext]]
    ) -> list[list[service.Line]]:
        """The plan lines of each (tenant, context), usage read in one go: the payer's and,
        for a consolidated invoice, that of every customer of its sections
        (``ctx.sections``, docs/hierarchies.md)."""
        wanted: list[tuple[str, str, str, datetime, datetime]] = []
        for tenant, ctx in contexts:
            start, end = service.usage_window(ctx.period_start, ctx.period_end)
            for subject in (ctx.subject, *ctx.sections):
                for price in service.metered_prices(ctx.plan):
                    wanted.append((tenant, price.meter, subject, start, end))
        values = iter(await self._values(wanted))
        out: list[list[service.Line]] = []
        for _, ctx in contexts:
            metered = service.metered_prices(ctx.plan)
            usage = {p.meter: next(values) for p in metered}
            section_usage = {(s, p.meter): next(values) for s in ctx.sections for p in metered}
            out.append(service.invoice_lines(ctx, usage, section_usage))
        return out

    async def adjustments(
        self, drafts: Sequence[Invoice], since: datetime, plans: Mapping[str, Plan]
    ) -> dict[str, list[service.Line]]:
        """Late-usage lines for each draft: every earlier issued period of its subscription
        (within the look-back) whose usage changed since it was billed."""
        repo = self.tx.repo(InvoicingRepository)
        history = await repo.billed_history(
            [(d.tenant_id, of_subscription(d)[0]) for d in drafts], since
        )
        known = {p.id: p for p in plans.values()}
        missing = {of_subscription(inv)[1] for inv, _ in history} - set(known)
        known |= await repo.plans(missing)
        # keyed by subject too: a section's customer (docs/hierarchies.md) has its own usage
        # of each period, adjusted in its own section; a flat customer has one subject
        billed: dict[tuple[str, str, str, datetime, str | None], service.Billed] = {}
        for inv, ln in history:
            sub_id, plan_id = of_subscription(inv)
            key = (inv.tenant_id, sub_id, ln.price_key, ln.period_start, ln.subject)
            if key not in billed:
                spec = self.plans.spec(known[plan_id])
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
                    usage_billed=inv.usage_billed,
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
                by_sub.get((d.tenant_id, of_subscription(d)[0]), []), key=lambda p: p[0].start
            )
            out[d.id] = service.adjustments(
                [b for b, _ in pairs], [v for _, v in pairs], d.currency
            )
        return out


def line_values(
    invoice_id: str, tenant_id: str, lines: Sequence[service.Line]
) -> list[dict[str, Any]]:
    """The invoice_lines rows of ``lines``."""
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
            "tiers": _tiers(ln.tiers),
            "proration": ln.proration,
            "minimum_applied": ln.minimum_applied,
            "amount": ln.amount,
            "adjustment_for": ln.adjustment_for,
            "grant_id": ln.grant_id,
            "tax_rate": ln.tax_rate,
            "applies_to": ln.applies_to,
            "discount_id": ln.discount_id,
            "tax_names": None if ln.tax_names is None else list(ln.tax_names),
            "taxes": EncodedList(
                [t.json for t in ln.tax_amounts],
                "[" + ", ".join([t.json_text for t in ln.tax_amounts]) + "]",
            ),
        }
        for i, ln in enumerate(lines)
    ]


def _tiers(parts: Sequence[pricing.TierPart]) -> list[dict[str, Any]]:
    """The ``tiers`` column of a line: ``TierLine`` of each part as JSON values, with their
    text (``EncodedList``) when every part is plain."""
    values: list[dict[str, Any]] = []
    for p in parts:
        v = _tier_json(p)
        if v is None:
            return [TierLine.model_validate(vars(p)).model_dump(mode="json") for p in parts]
        values.append(v)
    text = ", ".join(
        f'{{"tier": {v["tier"]}, "quantity": "{v["quantity"]}", '
        f'"unit_price": "{v["unit_price"]}", "flat_fee": "{v["flat_fee"]}", '
        f'"amount": "{v["amount"]}"}}'
        for v in values
    )
    return EncodedList(values, f"[{text}]")


def _tier_json(p: pricing.TierPart) -> dict[str, Any] | None:
    """``TierLine`` of ``p`` as JSON values, built straight when its values are plain (an
    int and finite decimals, what validation keeps as they are: their text is digits, a
    sign and a point, nothing to escape); None otherwise."""
    if (
        type(p.tier) is int
        and type(p.quantity) is Decimal
        and type(p.unit_price) is Decimal
        and type(p.flat_fee) is Decimal
        and type(p.amount) is Decimal
        and p.quantity.is_finite()
        and p.unit_price.is_finite()
        and p.flat_fee.is_finite()
        and p.amount.is_finite()
    ):
        return {
            "tier": p.tier,
            "quantity": dump_decimal(p.quantity),
            "unit_price": dump_decimal(p.unit_price),
            "flat_fee": dump_decimal(p.flat_fee),
            "amount": dump_decimal(p.amount),
        }
    return None

"""The invoicing repository: every SQL statement invoicing runs, and the only code that
creates or changes its rows.

Periods are billed once: an invoice is unique per (tenant, subscription, period start), and
billing runs claim due subscriptions and finalizable drafts with ``FOR UPDATE SKIP LOCKED``,
so any number of replicas can run them. Invoice numbers come from a per-tenant, per-year
counter row, locked for the rest of the finalizing transaction: gapless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from storage.invoicing.billing_runs import BILLED_BY_RUNS, BillingRunQueries
from storage.invoicing.bulk import bulk
from storage.invoicing.claims import claim_subscriptions
from storage.invoicing.models import (
    Customer,
    Invoice,
    InvoiceLineRow,
    InvoicePayment,
    InvoiceSequence,
    InvoicingConfigRow,
    Plan,
    Subscription,
)
from storage.quarantine import not_quarantined

LINE_COLUMNS = [c.name for c in InvoiceLineRow.__table__.columns]
INVOICE_COLUMNS = [c.name for c in Invoice.__table__.columns]
ANALYZE_AFTER = 5000  # drafts made or snapshot by a run: refresh the statistics of invoices


#: lines of the invoices ``:ids``, each invoice's read by a lookup of the primary key
#: (invoice_id, position). ``WHERE invoice_id IN (…)`` let the planner pick a scan of every
#: line of every invoice when the table's statistics were older than a billing run's writes
#: (100 invoices estimated at ~10,000 lines): during a run of 100,000 subscriptions each
#: ``GET /v1/invoices`` read half a million lines (issue 22). The subquery's ``ORDER BY``
#: keeps PostgreSQL from flattening it into a join: it runs per id, by the index.
_LINES = text(
    """
    SELECT l.* FROM unnest(CAST(:ids AS varchar[])) AS k(id)
    CROSS JOIN LATERAL (
        SELECT * FROM invoice_lines WHERE invoice_id = k.id ORDER BY position
    ) AS l
    ORDER BY l.invoice_id, l.position
    """
)


class InvoicingRepository(BillingRunQueries):
    """Every method takes the tenant (or returns rows that carry it): no cross-tenant reads."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # config ------------------------------------------------------------------------

    async def config(self, tenant_id: str) -> InvoicingConfigRow | None:
        return await self.session.get(InvoicingConfigRow, tenant_id)

    async def configs(self, tenant_ids: Iterable[str]) -> dict[str, InvoicingConfigRow]:
        rows = await self.session.scalars(
            select(InvoicingConfigRow).where(InvoicingConfigRow.tenant_id.in_(set(tenant_ids)))
        )
        return {r.tenant_id: r for r in rows}

    async def set_config(self, tenant_id: str, values: dict[str, Any]) -> None:
        stmt = insert(InvoicingConfigRow).values(tenant_id=tenant_id, **values)
        await self.session.execute(
            stmt.on_conflict_do_update(index_elements=["tenant_id"], set_=values)
        )

    # customers ---------------------------------------------------------------------

    async def customer(
        self, tenant_id: str, external_id: str, *, lock: bool = True
    ) -> Customer | None:
        """The customer, its row locked for the transaction (a command changing it or what
        hangs on it) unless ``lock`` is False (a read: the API's)."""
        q = select(Customer).where(
            Customer.tenant_id == tenant_id, Customer.external_id == external_id
        )
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def customers(self, ids: Iterable[str]) -> dict[str, Customer]:
        rows = await self.session.scalars(select(Customer).where(Customer.id.in_(set(ids))))
        return {c.id: c for c in rows}

    async def add_customer(self, id: str, tenant_id: str, columns: Mapping[str, Any]) -> Customer:
        """A new customer with ``columns`` (its spec's), written at once."""
        customer = Customer(id=id, tenant_id=tenant_id, **columns)
        self.session.add(customer)
        await self.session.flush()
        return customer

    async def update_customer(
        self, customer: Customer, columns: Mapping[str, Any], at: datetime
    ) -> None:
        for k, v in columns.items():
            setattr(customer, k, v)
        customer.updated_at = at

    async def has_live_subscriptions(self, tenant_id: str, customer_id: str) -> bool:
        return bool(
            await self.session.scalar(
                select(
                    exists().where(
                        Subscription.tenant_id == tenant_id,
                        Subscription.customer_id == customer_id,
                        Subscription.status == "active",
                    )
                )
            )
        )

    async def list_customers(self, tenant_id: str, limit: int, after: str | None) -> list[Customer]:
        q = select(Customer).where(Customer.tenant_id == tenant_id)
        if after:
            q = q.where(Customer.external_id > after)
        return list(await self.session.scalars(q.order_by(Customer.external_id).limit(limit)))

    # plans -------------------------------------------------------------------------

    async def plan(self, tenant_id: str, key: str) -> Plan | None:
        return await self.session.scalar(
            select(Plan).where(Plan.tenant_id == tenant_id, Plan.key == key)
        )

    async def plans(self, ids: Iterable[str]) -> dict[str, Plan]:
        rows = await self.session.scalars(select(Plan).where(Plan.id.in_(set(ids))))
        return {p.id: p for p in rows}

    async def list_plans(self, tenant_id: str) -> list[Plan]:
        return list(
            await self.session.scalars(
                select(Plan).where(Plan.tenant_id == tenant_id).order_by(Plan.key)
            )
        )

    async def add_plan(
        self, id: str, tenant_id: str, key: str, currency: str, interval: str, spec: dict[str, Any]
    ) -> Plan | None:
        """Insert a plan (``spec``: its PlanSpec as JSON); when its key exists, return the
        existing one instead."""
        inserted = await self.session.scalar(
            insert(Plan)
            .values(id=id, tenant_id=tenant_id, key=key, currency=currency, interval=interval)
            .values(spec=spec)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
            .returning(Plan.id)
        )
        if inserted is not None:
            return None
        return await self.plan(tenant_id, key)

    # subscriptions -----------------------------------------------------------------

    async def subscription(
        self, tenant_id: str, id: str, *, lock: bool = False
    ) -> Subscription | None:
        q = select(Subscription).where(Subscription.tenant_id == tenant_id, Subscription.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def add_subscription(self, **columns: Any) -> Subscription:
        """A new subscription with ``columns``, written at once."""
        sub = Subscription(**columns)
        self.session.add(sub)
        await self.session.flush()
        return sub

    async def cancel_at_period_end(self, sub: Subscription) -> None:
        sub.cancel_at_period_end = True

    async def end_subscription(self, sub: Subscription, at: datetime) -> None:
        """End ``sub`` at ``at`` (an immediate cancel): its current period ends there too."""
        sub.status, sub.ended_at, sub.current_period_end = "ended", at, at
        sub.next_plan_id = None

    async def set_next_plan(self, sub: Subscription, plan_id: str | None) -> None:
        """Switch to ``plan_id`` at the period boundary (None: stay on the current plan)."""
        sub.next_plan_id = plan_id

    async def overlapping(self, tenant_id: str, customer_id: str, plan_id: str) -> str | None:
        """The id of a live subscription of this customer to this plan, if any."""
        return await self.session.scalar(
            select(Subscription.id).where(
                Subscription.tenant_id == tenant_id,
                Subscription.customer_id == customer_id,
                Subscription.status == "active",
                (Subscription.plan_id == plan_id) | (Subscription.next_plan_id == plan_id),
            )
        )

    async def list_subscriptions(
        self, tenant_id: str, customer_id: str | None, limit: int
    ) -> list[Subscription]:
        q = select(Subscription).where(Subscription.tenant_id == tenant_id)
        if customer_id:
            q = q.where(Subscription.customer_id == customer_id)
        return list(await self.session.scalars(q.order_by(Subscription.id).limit(limit)))

    async def claim_due(
        self,
        as_of: datetime,
        tenant_id: str | None,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[Subscription]:
        """Active subscriptions whose current period ended by ``as_of``, locked; rows another
        transaction holds are skipped (that replica bills them), and so are the ones ``job``
        quarantined. ``only``: just these (tenant, id) pairs, if still due."""
        return await claim_subscriptions(
            self.session,
            Subscription.status == "active",
            Subscription.current_period_end <= as_of,
            job=job,
            tenant_id=tenant_id,
            only=only,
            order_by=Subscription.current_period_end,
            limit=limit,
        )

    # invoices ----------------------------------------------------------------------

    async def insert_invoices(
        self, invoices: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]
    ) -> set[str]:
        """Insert drafts and their lines; a period already invoiced is skipped. Returns the
        ids inserted."""
        inserted = set(
            await bulk(
                self.session,
                Invoice.__table__,
                invoices,
                suffix="ON CONFLICT (tenant_id, subscription_id, period_start) DO NOTHING "
                "RETURNING id",
            )
        )
        await self.insert_lines([ln for ln in lines if ln["invoice_id"] in inserted])
        return inserted

    async def insert_lines(self, lines: Sequence[dict[str, Any]]) -> None:
        await bulk(self.session, InvoiceLineRow.__table__, lines)

    async def update_invoices(self, rows: Sequence[dict[str, Any]]) -> None:
        """Set the given columns of each invoice (``id`` in every row): one statement."""
        await bulk(self.session, Invoice.__table__, rows, update_by=("id",))

    async def update_subscriptions(self, rows: Sequence[dict[str, Any]]) -> None:
        await bulk(self.session, Subscription.__table__, rows, update_by=("tenant_id", "id"))

    async def replace_lines(
        self, invoice_ids: Sequence[str], lines: Sequence[dict[str, Any]]
    ) -> None:
        await self.session.execute(
            delete(InvoiceLineRow).where(InvoiceLineRow.invoice_id.in_(invoice_ids))
        )
        await self.insert_lines(lines)

    async def delete_drafts(self, ids: Sequence[str]) -> None:
        """Drop drafts that are not to be issued (lines go with them)."""
        if ids:
            await self.session.execute(
                delete(Invoice).where(Invoice.id.in_(ids), Invoice.status == "draft")
            )

    async def snapshot_offsets(self, usage_ends: dict[int, int], drafted: int = 0) -> int:
        """Record the usage topic's end offsets on the drafts that have none yet (those not
        drafted by a billing run, which stamps its own): usage up to their period end was
        appended before this moment.

        After a run drafted or snapshot many (``drafted`` + these) the table's statistics are
        refreshed (``ANALYZE``, a sample: a few hundred ms at 100,000 invoices): they were
        taken before these drafts, and with them the planner expects almost no draft to be
        finalizable and sorts every draft, chunk after chunk, instead of reading the next
        chunk off ``ix_invoices_drafts`` (issue 22)."""
        result = await self.session.execute(
            update(Invoice)
            .where(Invoice.status == "draft", Invoice.usage_offsets.is_(None), BILLED_BY_RUNS)
            .values(usage_offsets={str(p): o for p, o in usage_ends.items()})
        )
        snapshot = int(result.rowcount)  # type: ignore[attr-defined]
        if snapshot + drafted >= ANALYZE_AFTER:
            await self.session.execute(text("ANALYZE invoices, invoice_lines"))
        return snapshot

    async def claim_finalizable(
        self,
        as_of: datetime,
        tenant_id: str | None,
        committed: dict[int, int],
        limit: int,
        *,
        job: str,
        only: Sequence[str] | None = None,
        wait: bool = False,
    ) -> list[Invoice]:
        """Drafts past their grace period whose usage metering has applied (``committed``,
        its offsets, reached the draft's snapshot on every partition), oldest first, locked
        (skipping other replicas'), and only the earliest draft of each subscription: a
        subscription's invoices finalize in period order, so late-usage adjustments see
        every earlier invoice. Drafts ``job`` quarantined are left out; ``only``: just these
        invoice ids, if still finalizable. ``wait``: wait for a draft another transaction
        holds locked instead of skipping it (then judge it as that transaction left it)."""
        earlier = aliased(Invoice)
        caught_up = text(
            "NOT EXISTS (SELECT 1 FROM jsonb_each_text(invoices.usage_offsets) AS e(p, o)"
            " WHERE CAST(e.o AS bigint) > COALESCE(CAST(CAST(:committed AS jsonb) ->> e.p"
            " AS bigint), 0))"
        ).bindparams(committed=json.dumps({str(p): o for p, o in committed.items()}))
        q = select(Invoice).where(
            Invoice.status == "draft",
            BILLED_BY_RUNS,
            Invoice.finalize_after <= as_of,
            Invoice.usage_offsets.is_not(None),
            caught_up,
            ~exists().where(
                and_(
                    earlier.tenant_id == Invoice.tenant_id,
                    earlier.subscription_id == Invoice.subscription_id,
                    earlier.status == "draft",
                    earlier.period_start < Invoice.period_start,
                )
            ),
            not_quarantined(job, "invoice", Invoice.tenant_id, Invoice.id),
        )
        if tenant_id is not None:
            q = q.where(Invoice.tenant_id == tenant_id)
        if only is not None:
            q = q.where(Invoice.id.in_(only))
        q = q.order_by(Invoice.finalize_after, Invoice.id).limit(limit)
        return list(await self.session.scalars(q.with_for_update(skip_locked=not wait)))

    async def invoice(self, tenant_id: str, id: str, *, lock: bool = False) -> Invoice | None:
        q = select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def lines(self, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLineRow]]:
        """The lines of each invoice, in order: one primary-key lookup per invoice, whatever
        the statistics say (``_LINES``)."""
        rows = await self.session.scalars(
            select(InvoiceLineRow).from_statement(_LINES.bindparams(ids=sorted(set(invoice_ids))))
        )
        out: dict[str, list[InvoiceLineRow]] = {i: [] for i in invoice_ids}
        for r in rows:
            out[r.invoice_id].append(r)
        return out

    async def list_invoices(
        self,
        tenant_id: str,
        *,
        customer_id: str | None,
        subscription_id: str | None,
        status: str | None,
        limit: int,
        customer_ids: Sequence[str] | None = None,
    ) -> list[Invoice]:
        """The tenant's invoices, latest period first; ``customer_ids``: of any of these
        customers (a subtree's)."""
        q = select(Invoice).where(Invoice.tenant_id == tenant_id)
        if customer_id:
            q = q.where(Invoice.customer_id == customer_id)
        if customer_ids is not None:
            q = q.where(Invoice.customer_id.in_(customer_ids))
        if subscription_id:
            q = q.where(Invoice.subscription_id == subscription_id)
        if status:
            q = q.where(Invoice.status == status)
        q = q.order_by(Invoice.period_start.desc(), Invoice.id).limit(limit)
        return list(await self.session.scalars(q))

    async def billed_history(
        self, keys: Sequence[tuple[str, str]], since: datetime
    ) -> list[tuple[Invoice, InvoiceLineRow]]:
        """Usage lines (original and adjustments, not discounts) of the not-void issued
        invoices of these (tenant, subscription) pairs whose usage period ends after
        ``since``."""
        if not keys:
            return []
        q = (
            select(Invoice, InvoiceLineRow)
            .join(InvoiceLineRow, InvoiceLineRow.invoice_id == Invoice.id)
            .where(tuple_(Invoice.tenant_id, Invoice.subscription_id).in_(keys))
            .where(
                Invoice.status.in_(("finalized", "paid", "uncollectible")),
                InvoiceLineRow.meter.is_not(None),
                InvoiceLineRow.kind != "discount",  # a discount reduces a line, not usage
                InvoiceLineRow.period_end > since,
            )
            .order_by(Invoice.period_start, InvoiceLineRow.position)  # the original line first
        )
        return [(i, ln) for i, ln in await self.session.execute(q)]

    async def next_numbers(self, tenant_id: str, year: int, n: int) -> int:
        """Reserve ``n`` consecutive numbers; returns the first. The counter row stays locked
        until the transaction ends, so numbers are gapless and in finalization order."""
        stmt = insert(InvoiceSequence).values(tenant_id=tenant_id, year=year, last=n)
        last = await self.session.scalar(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "year"], set_={"last": InvoiceSequence.last + n}
            ).returning(InvoiceSequence.last)
        )
        assert last is not None
        return int(last) - n + 1

    async def close_invoice(
        self, invoice: Invoice, status: str, at: datetime, reason: str | None
    ) -> None:
        """Void ``invoice`` or mark it uncollectible (``status``), with why."""
        invoice.status, invoice.closed_at, invoice.status_reason = status, at, reason

    async def add_payment(
        self,
        tenant_id: str,
        payment_id: str,
        invoice_id: str,
        amount: int,
        currency: str,
        method: str,
    ) -> bool:
        """Record a payment (a refund: a negative amount) once (by payment id); False when
        it was recorded before."""
        values = {
            "tenant_id": tenant_id,
            "payment_id": payment_id,
            "invoice_id": invoice_id,
            "amount": amount,
            "currency": currency,
            "method": method,
        }
        inserted = await self.session.scalar(
            insert(InvoicePayment)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["tenant_id", "payment_id"])
            .returning(InvoicePayment.payment_id)
        )
        return inserted is not None

    async def apply_payment(self, invoice: Invoice, amount: int, paid_at: datetime | None) -> None:
        """Add ``amount`` to what ``invoice`` was paid; ``paid_at``: it is now paid."""
        invoice.amount_paid += amount
        if paid_at is not None:
            invoice.status, invoice.paid_at = "paid", paid_at

    async def apply_refund(self, invoice: Invoice, amount: int) -> None:
        invoice.amount_refunded += amount

    async def payments(self, tenant_id: str, invoice_id: str) -> list[InvoicePayment]:
        return list(
            await self.session.scalars(
                select(InvoicePayment)
                .where(
                    InvoicePayment.tenant_id == tenant_id, InvoicePayment.invoice_id == invoice_id
                )
                .order_by(InvoicePayment.received_at)
            )
        )

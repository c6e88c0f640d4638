"""Invoicing: customers, plans, subscriptions, billing runs, invoices and their lines.

Periods are billed once: an invoice is unique per (tenant, subscription, period start), and
the scheduler claims due subscriptions and finalizable drafts with ``FOR UPDATE SKIP
LOCKED``, so any number of replicas can run it. Invoice numbers come from a per-tenant,
per-year counter row, locked for the rest of the finalizing transaction: gapless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    exists,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, aliased, mapped_column

from storage.db import Base
from storage.quarantine import not_quarantined


class InvoicingConfigRow(Base):
    __tablename__ = "invoicing_configs"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    rounding: Mapped[str] = mapped_column(String(16))
    grace_period_hours: Mapped[int] = mapped_column(Integer)
    number_prefix: Mapped[str] = mapped_column(String(16))


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric)
    tax_exempt: Mapped[bool] = mapped_column(Boolean)
    net_terms_days: Mapped[int] = mapped_column(Integer)
    billing_address: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str] = mapped_column(String(8))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="PlanSpec JSON (exact decimals)")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        Index("ix_subscriptions_due", "current_period_end", postgresql_where="status = 'active'"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    next_plan_id: Mapped[str | None] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(16))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    anchor: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), comment="periods count from here (the start, or a plan change)"
    )
    period_index: Mapped[int] = mapped_column(Integer, comment="periods since the anchor")
    current_period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillingRun(Base):
    __tablename__ = "billing_runs"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), comment="pending | completed | failed")
    invoices_created: Mapped[int] = mapped_column(Integer, default=0)
    invoices_finalized: Mapped[int] = mapped_column(Integer, default=0)
    drafts_waiting: Mapped[int] = mapped_column(Integer, default=0)
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text, comment="why a failed run failed")


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "subscription_id", "period_start", name="uq_invoices_period"),
        UniqueConstraint("tenant_id", "number", name="uq_invoices_number"),
        ForeignKeyConstraint(
            ["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]
        ),
        Index("ix_invoices_drafts", "finalize_after", postgresql_where="status = 'draft'"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[str] = mapped_column(String(64))
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(16))
    number: Mapped[str | None] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    proration: Mapped[Decimal] = mapped_column(Numeric, comment="share of the flat fees billed")
    subtotal: Mapped[int] = mapped_column(BigInteger)
    tax: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric)
    rounding: Mapped[str] = mapped_column(String(16))
    finalize_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    usage_offsets: Mapped[dict[str, int] | None] = mapped_column(
        JSONB(none_as_null=True), comment="usage topic end offsets after period close, by partition"
    )
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="voided or marked uncollectible"
    )
    status_reason: Mapped[str | None] = mapped_column(Text)


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    price_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    meter: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(256))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    unit_price: Mapped[Decimal | None] = mapped_column(Numeric)
    tiers: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    proration: Mapped[Decimal] = mapped_column(Numeric)
    minimum_applied: Mapped[bool] = mapped_column(Boolean)
    amount: Mapped[int] = mapped_column(BigInteger)
    adjustment_for: Mapped[str | None] = mapped_column(String(64))


class InvoicePayment(Base):
    __tablename__ = "invoice_payments"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class InvoiceSequence(Base):
    __tablename__ = "invoice_sequences"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


# --- repository ----------------------------------------------------------------------


LINE_COLUMNS = [c.name for c in InvoiceLineRow.__table__.columns]
INVOICE_COLUMNS = [c.name for c in Invoice.__table__.columns]


class InvoicingRepository:
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

    async def customer(self, tenant_id: str, external_id: str) -> Customer | None:
        return await self.session.scalar(
            select(Customer)
            .where(Customer.tenant_id == tenant_id, Customer.external_id == external_id)
            .with_for_update()
        )

    async def customers(self, ids: Iterable[str]) -> dict[str, Customer]:
        rows = await self.session.scalars(select(Customer).where(Customer.id.in_(set(ids))))
        return {c.id: c for c in rows}

    def add(self, row: Base) -> None:
        self.session.add(row)

    async def flush(self) -> None:
        await self.session.flush()

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

    async def add_plan(self, plan: Plan) -> Plan | None:
        """Insert ``plan``; when its key exists, return the existing one instead."""
        values = {c: getattr(plan, c) for c in ("id", "tenant_id", "key", "currency", "interval")}
        inserted = await self.session.scalar(
            insert(Plan)
            .values(**values, spec=plan.spec)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
            .returning(Plan.id)
        )
        if inserted is not None:
            return None
        return await self.plan(plan.tenant_id, plan.key)

    # subscriptions -----------------------------------------------------------------

    async def subscription(
        self, tenant_id: str, id: str, *, lock: bool = False
    ) -> Subscription | None:
        q = select(Subscription).where(Subscription.tenant_id == tenant_id, Subscription.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

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
        q = select(Subscription).where(
            Subscription.status == "active",
            Subscription.current_period_end <= as_of,
            not_quarantined(job, "subscription", Subscription.tenant_id, Subscription.id),
        )
        if tenant_id is not None:
            q = q.where(Subscription.tenant_id == tenant_id)
        if only is not None:
            q = q.where(tuple_(Subscription.tenant_id, Subscription.id).in_(only))
        q = q.order_by(Subscription.current_period_end).limit(limit)
        return list(await self.session.scalars(q.with_for_update(skip_locked=True)))

    # invoices ----------------------------------------------------------------------

    async def insert_invoices(
        self, invoices: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]
    ) -> set[str]:
        """Insert drafts and their lines; a period already invoiced is skipped. Returns the
        ids inserted."""
        inserted = set(
            await _bulk(
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
        await _bulk(self.session, InvoiceLineRow.__table__, lines)

    async def update_invoices(self, rows: Sequence[dict[str, Any]]) -> None:
        """Set the given columns of each invoice (``id`` in every row): one statement."""
        await _bulk(self.session, Invoice.__table__, rows, update_by=("id",))

    async def update_subscriptions(self, rows: Sequence[dict[str, Any]]) -> None:
        await _bulk(self.session, Subscription.__table__, rows, update_by=("tenant_id", "id"))

    async def replace_lines(
        self, invoice_ids: Sequence[str], lines: Sequence[dict[str, Any]]
    ) -> None:
        await self.session.execute(
            delete(InvoiceLineRow).where(InvoiceLineRow.invoice_id.in_(invoice_ids))
        )
        await self.insert_lines(lines)

    async def snapshot_offsets(self, usage_ends: dict[int, int]) -> int:
        """Record the usage topic's end offsets on the drafts that have none yet: usage up
        to their period end was appended before this moment."""
        result = await self.session.execute(
            update(Invoice)
            .where(Invoice.status == "draft", Invoice.usage_offsets.is_(None))
            .values(usage_offsets={str(p): o for p, o in usage_ends.items()})
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def claim_finalizable(
        self,
        as_of: datetime,
        tenant_id: str | None,
        committed: dict[int, int],
        limit: int,
        *,
        job: str,
        only: Sequence[str] | None = None,
    ) -> list[Invoice]:
        """Drafts past their grace period whose usage metering has applied (``committed``,
        its offsets, reached the draft's snapshot on every partition), oldest first, locked
        (skipping other replicas'), and only the earliest draft of each subscription: a
        subscription's invoices finalize in period order, so late-usage adjustments see
        every earlier invoice. Drafts ``job`` quarantined are left out; ``only``: just these
        invoice ids, if still finalizable."""
        earlier = aliased(Invoice)
        caught_up = text(
            "NOT EXISTS (SELECT 1 FROM jsonb_each_text(invoices.usage_offsets) AS e(p, o)"
            " WHERE CAST(e.o AS bigint) > COALESCE(CAST(CAST(:committed AS jsonb) ->> e.p"
            " AS bigint), 0))"
        ).bindparams(committed=json.dumps({str(p): o for p, o in committed.items()}))
        q = select(Invoice).where(
            Invoice.status == "draft",
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
        return list(await self.session.scalars(q.with_for_update(skip_locked=True)))

    async def invoice(self, tenant_id: str, id: str, *, lock: bool = False) -> Invoice | None:
        q = select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def lines(self, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLineRow]]:
        rows = await self.session.scalars(
            select(InvoiceLineRow)
            .where(InvoiceLineRow.invoice_id.in_(invoice_ids))
            .order_by(InvoiceLineRow.invoice_id, InvoiceLineRow.position)
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
    ) -> list[Invoice]:
        q = select(Invoice).where(Invoice.tenant_id == tenant_id)
        if customer_id:
            q = q.where(Invoice.customer_id == customer_id)
        if subscription_id:
            q = q.where(Invoice.subscription_id == subscription_id)
        if status:
            q = q.where(Invoice.status == status)
        q = q.order_by(Invoice.period_start.desc(), Invoice.id).limit(limit)
        return list(await self.session.scalars(q))

    async def billed_history(
        self, keys: Sequence[tuple[str, str]], since: datetime
    ) -> list[tuple[Invoice, InvoiceLineRow]]:
        """Usage lines (original and adjustments) of the not-void issued invoices of these
        (tenant, subscription) pairs whose usage period ends after ``since``."""
        if not keys:
            return []
        q = (
            select(Invoice, InvoiceLineRow)
            .join(InvoiceLineRow, InvoiceLineRow.invoice_id == Invoice.id)
            .where(tuple_(Invoice.tenant_id, Invoice.subscription_id).in_(keys))
            .where(
                Invoice.status.in_(("finalized", "paid", "uncollectible")),
                InvoiceLineRow.meter.is_not(None),
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

    async def add_payment(self, payment: InvoicePayment) -> bool:
        """Record a payment once (by payment id); False when it was recorded before."""
        values = {c.name: getattr(payment, c.name) for c in InvoicePayment.__table__.columns}
        values.pop("received_at")
        inserted = await self.session.scalar(
            insert(InvoicePayment)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["tenant_id", "payment_id"])
            .returning(InvoicePayment.payment_id)
        )
        return inserted is not None

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

    # billing runs ------------------------------------------------------------------

    async def add_run(self, run: BillingRun) -> bool:
        inserted = await self.session.scalar(
            insert(BillingRun)
            .values(tenant_id=run.tenant_id, id=run.id, as_of=run.as_of, status="pending")
            .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
            .returning(BillingRun.id)
        )
        return inserted is not None

    async def run(self, tenant_id: str, id: str) -> BillingRun | None:
        return await self.session.scalar(
            select(BillingRun).where(BillingRun.tenant_id == tenant_id, BillingRun.id == id)
        )

    async def claim_pending_run(
        self, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> BillingRun | None:
        """The oldest pending run (``only``: one of these (tenant, id) pairs), locked; runs
        ``job`` quarantined are left out."""
        q = select(BillingRun).where(
            BillingRun.status == "pending",
            not_quarantined(job, "billing_run", BillingRun.tenant_id, BillingRun.id),
        )
        if only is not None:
            q = q.where(tuple_(BillingRun.tenant_id, BillingRun.id).in_(only))
        return await self.session.scalar(
            q.order_by(BillingRun.requested_at).limit(1).with_for_update(skip_locked=True)
        )

    async def fail_run(self, tenant_id: str, id: str, error: str) -> None:
        await self.session.execute(
            update(BillingRun)
            .where(BillingRun.tenant_id == tenant_id, BillingRun.id == id)
            .values(status="failed", error=error, completed_at=func.now())
        )

    async def drafts_waiting(self, tenant_id: str | None, as_of: datetime) -> int:
        q = select(func.count()).where(Invoice.status == "draft", Invoice.finalize_after <= as_of)
        if tenant_id is not None:
            q = q.where(Invoice.tenant_id == tenant_id)
        return int(await self.session.scalar(q) or 0)

    async def lock_scheduler(self) -> bool:
        """Transaction-scoped advisory lock so only one replica's tick opens at a time."""
        return bool(
            await self.session.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext('billstream.invoicing'))")
            )
        )


def _sql_type(column: Any) -> str:
    dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(column.type.compile(dialect=dialect))


async def _bulk(
    session: AsyncSession,
    table: Any,
    rows: Sequence[dict[str, Any]],
    *,
    suffix: str = "",
    update_by: tuple[str, ...] = (),
) -> list[Any]:
    """One set-based statement for many rows (all with the same keys): an INSERT, or with
    ``update_by`` an UPDATE matched on those columns, from ``unnest`` of one array per
    column. Returns the first column of what ``suffix`` (e.g. RETURNING) yields."""
    if not rows:
        return []
    names = list(rows[0])
    columns = [table.c[n] for n in names]
    params: dict[str, Any] = {}
    for i, c in enumerate(columns):
        values = [r[c.name] for r in rows]
        if isinstance(c.type, JSONB):
            values = [None if v is None else json.dumps(v) for v in values]
        params[f"p{i}"] = values
    arrays = ", ".join(f"CAST(:p{i} AS {_sql_type(c)}[])" for i, c in enumerate(columns))
    source = f"unnest({arrays}) AS v({', '.join(names)})"
    if update_by:
        sets = ", ".join(f"{n} = v.{n}" for n in names if n not in update_by)
        match = " AND ".join(f"t.{n} = v.{n}" for n in update_by)
        sql = f"UPDATE {table.name} AS t SET {sets} FROM {source} WHERE {match} {suffix}"
    else:
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM {source} {suffix}"
    result = await session.execute(text(sql), params)
    return list(result.scalars()) if suffix and "RETURNING" in suffix else []

"""Prepaid credits' repository: all the SQL of grants (immutable rows), the append-only
ledger of their entries, automatic top-ups and commitments (the models are in
``credit_models.py``, re-exported here).

A grant's balance is the sum of its ledger entries; its balance *as of* a time, the sum of
the entries whose ``at`` is not later. No entry is ever updated or deleted. Every entry has
a key unique per tenant (``applied:<grant>:<invoice>``, ``expired:<grant>`` …), so writing
one twice (a replay, a retry after kill -9) writes nothing. Credit changes of a customer
are serialised by its customer row lock (``lock_customers``), taken after any invoice lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.credit_models import (
    AutoTopUp,
    Commitment,
    CommitmentEntry,
    CommitmentState,
    CreditEntry,
    CreditGrant,
)
from storage.invoicing.models import Customer, Invoice, Plan, Subscription
from storage.quarantine import not_quarantined

__all__ = [
    "AutoTopUp",
    "Commitment",
    "CommitmentEntry",
    "CommitmentState",
    "CreditEntry",
    "CreditGrant",
    "CreditRepository",
]


class CreditRepository:
    """Every method takes the tenant or rows that carry it: no cross-tenant reads."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_customers(self, ids: Iterable[str]) -> None:
        """Lock these customers' rows (in id order: no deadlock between two lockers) for the
        rest of the transaction: their credit balances cannot change meanwhile."""
        await self.session.execute(
            select(Customer.id)
            .where(Customer.id.in_(set(ids)))
            .order_by(Customer.id)
            .with_for_update()
        )

    async def find_customer(self, tenant_id: str, external_id: str) -> Customer | None:
        """A customer by external id, without locking it (reads)."""
        return await self.session.scalar(
            select(Customer).where(
                Customer.tenant_id == tenant_id, Customer.external_id == external_id
            )
        )

    async def customer_by_id(self, id: str) -> Customer:
        customer = await self.session.get(Customer, id)
        assert customer is not None, id
        return customer

    # grants --------------------------------------------------------------------------

    async def grant(self, tenant_id: str, id: str) -> CreditGrant | None:
        return await self.session.get(CreditGrant, (tenant_id, id))

    async def add_grant(self, **columns: Any) -> CreditGrant | None:
        """Insert a grant; None when the id is taken (the caller compares)."""
        inserted = await self.session.scalar(
            insert(CreditGrant)
            .values(**columns)
            .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
            .returning(CreditGrant.id)
        )
        if inserted is None:
            return None
        return await self.grant(columns["tenant_id"], columns["id"])

    async def set_invoice(self, grant: CreditGrant, invoice_id: str) -> None:
        """Link a top-up to its invoice (issued in the transaction that created the grant)."""
        grant.invoice_id = invoice_id

    async def applied(self, tenant_id: str, grant_id: str) -> int:
        """What the grant pays of invoices that stand: its applications less what voided
        invoices returned, in minor units."""
        total = await self.session.scalar(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(
                CreditEntry.tenant_id == tenant_id,
                CreditEntry.grant_id == grant_id,
                CreditEntry.kind.in_(("applied", "reversed")),
            )
        )
        return -int(total or 0)

    async def grants(self, tenant_id: str, customer_ids: Iterable[str]) -> list[CreditGrant]:
        return list(
            await self.session.scalars(
                select(CreditGrant)
                .where(CreditGrant.tenant_id == tenant_id)
                .where(CreditGrant.customer_id.in_(set(customer_ids)))
                .order_by(CreditGrant.effective_at, CreditGrant.id)
            )
        )

    async def grant_of_invoice(self, tenant_id: str, invoice_id: str) -> CreditGrant | None:
        return await self.session.scalar(
            select(CreditGrant).where(
                CreditGrant.tenant_id == tenant_id, CreditGrant.invoice_id == invoice_id
            )
        )

    async def usable(
        self, customer_ids: Sequence[str], as_of: datetime
    ) -> list[tuple[CreditGrant, int]]:
        """The grants of these customers that can pay an invoice finalized ``as_of``
        (effective by then, not expiring by then, a positive balance), each with its
        balance: the sum of all its entries (lock the customers first)."""
        if not customer_ids:
            return []
        balance = (
            select(
                CreditEntry.tenant_id, CreditEntry.grant_id, func.sum(CreditEntry.amount).label("b")
            )
            .where(CreditEntry.customer_id.in_(customer_ids))
            .group_by(CreditEntry.tenant_id, CreditEntry.grant_id)
            .subquery()
        )
        rows = await self.session.execute(
            select(CreditGrant, balance.c.b)
            .join(
                balance,
                (balance.c.tenant_id == CreditGrant.tenant_id)
                & (balance.c.grant_id == CreditGrant.id),
            )
            .where(
                CreditGrant.customer_id.in_(customer_ids),
                CreditGrant.effective_at <= as_of,
                or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > as_of),
                balance.c.b > 0,
            )
        )
        return [(g, int(b)) for g, b in rows]

    async def live_grants(self, customer_id: str, now: datetime) -> int:
        """How many grants of the customer still have credit (or will have, once in effect
        or paid) and have not expired by ``now``."""
        balance = (
            select(func.coalesce(func.sum(CreditEntry.amount), 0))
            .where(
                CreditEntry.tenant_id == CreditGrant.tenant_id,
                CreditEntry.grant_id == CreditGrant.id,
            )
            .scalar_subquery()
        )
        entries = select(CreditEntry.seq).where(
            CreditEntry.tenant_id == CreditGrant.tenant_id, CreditEntry.grant_id == CreditGrant.id
        )
        count = await self.session.scalar(
            select(func.count()).where(
                CreditGrant.customer_id == customer_id,
                or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > now),
                or_(balance > 0, ~entries.exists()),
            )
        )
        return int(count or 0)

    async def balances(
        self, tenant_id: str, grant_ids: Iterable[str], as_of: datetime | None = None
    ) -> dict[str, int]:
        """Each grant's balance: the sum of its entries (up to ``as_of`` when given)."""
        q = (
            select(CreditEntry.grant_id, func.sum(CreditEntry.amount))
            .where(CreditEntry.tenant_id == tenant_id, CreditEntry.grant_id.in_(set(grant_ids)))
            .group_by(CreditEntry.grant_id)
        )
        if as_of is not None:
            q = q.where(CreditEntry.at <= as_of)
        return {g: int(b) for g, b in await self.session.execute(q)}

    async def kinds(self, tenant_id: str, grant_ids: Iterable[str]) -> dict[str, set[str]]:
        """The kinds of entry each grant has."""
        rows = await self.session.execute(
            select(CreditEntry.grant_id, CreditEntry.kind)
            .where(CreditEntry.tenant_id == tenant_id, CreditEntry.grant_id.in_(set(grant_ids)))
            .distinct()
        )
        out: dict[str, set[str]] = {}
        for g, k in rows:
            out.setdefault(g, set()).add(k)
        return out

    async def expiring(
        self,
        now: datetime,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[CreditGrant]:
        """Grants whose expiry has come and that have not expired yet (any tenant), leaving
        out the ones ``job`` quarantined; ``only``: just these (tenant, id) pairs."""
        expired = select(CreditEntry.seq).where(
            CreditEntry.tenant_id == CreditGrant.tenant_id,
            CreditEntry.key == func.concat("expired:", CreditGrant.id),
        )
        q = select(CreditGrant).where(
            CreditGrant.expires_at <= now,
            ~expired.exists(),
            not_quarantined(job, "credit_grant", CreditGrant.tenant_id, CreditGrant.id),
        )
        if only is not None:
            q = q.where(tuple_(CreditGrant.tenant_id, CreditGrant.id).in_(only))
        q = q.order_by(CreditGrant.expires_at, CreditGrant.tenant_id, CreditGrant.id)
        return list(await self.session.scalars(q.limit(limit)))

    async def grant_sums(
        self, customer_ids: Iterable[str], as_of: datetime
    ) -> dict[str, tuple[int, set[str]]]:
        """By grant id: the sum of its entries up to ``as_of`` and the kinds of all of them."""
        rows = await self.session.execute(
            select(
                CreditEntry.grant_id,
                func.coalesce(func.sum(CreditEntry.amount).filter(CreditEntry.at <= as_of), 0),
                func.array_agg(func.distinct(CreditEntry.kind)),
            )
            .where(CreditEntry.customer_id.in_(set(customer_ids)))
            .group_by(CreditEntry.grant_id)
        )
        return {g: (int(b), set(k)) for g, b, k in rows}

    async def unbilled(
        self, customer_ids: Iterable[str]
    ) -> tuple[list[Invoice], list[tuple[Subscription, Plan]]]:
        """What these customers will be invoiced for: their drafts, and their live
        subscriptions (with the plan of the current period)."""
        ids = set(customer_ids)
        drafts = await self.session.scalars(
            select(Invoice).where(Invoice.customer_id.in_(ids), Invoice.status == "draft")
        )
        subs = await self.session.execute(
            select(Subscription, Plan)
            .join(Plan, Plan.id == Subscription.plan_id)
            .where(Subscription.customer_id.in_(ids), Subscription.status == "active")
        )
        return list(drafts), [(sub, plan) for sub, plan in subs]

    # the ledger -----------------------------------------------------------------------

    async def add_entries(self, rows: Sequence[dict[str, Any]]) -> list[CreditEntry]:
        """Append ledger entries; one whose key was written before is skipped. Returns the
        entries written."""
        if not rows:
            return []
        result = await self.session.scalars(
            insert(CreditEntry)
            .values(list(rows))
            .on_conflict_do_nothing(constraint="uq_credit_entries_key")
            .returning(CreditEntry)
        )
        return list(result)

    async def append_entries(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Append many ledger entries in one statement (a finalizing chunk's); returns the
        keys written (one written before is skipped)."""
        if not rows:
            return set()
        result = await self.session.execute(
            insert(CreditEntry)
            .on_conflict_do_nothing(constraint="uq_credit_entries_key")
            .returning(CreditEntry.key),
            list(rows),
        )
        return set(result.scalars())

    async def entries_of_invoice(self, tenant_id: str, invoice_id: str) -> list[CreditEntry]:
        return list(
            await self.session.scalars(
                select(CreditEntry)
                .where(CreditEntry.tenant_id == tenant_id, CreditEntry.invoice_id == invoice_id)
                .order_by(CreditEntry.seq)
            )
        )

    async def ledger(
        self, tenant_id: str, customer_id: str, limit: int, after: int | None
    ) -> list[CreditEntry]:
        q = select(CreditEntry).where(
            CreditEntry.tenant_id == tenant_id, CreditEntry.customer_id == customer_id
        )
        if after is not None:
            q = q.where(CreditEntry.seq > after)
        return list(await self.session.scalars(q.order_by(CreditEntry.seq).limit(limit)))

    # commitments ----------------------------------------------------------------------

    async def add_commitment(self, **columns: Any) -> Commitment | None:
        """Insert a commitment; None when the id is taken (the caller compares)."""
        inserted = await self.session.scalar(
            insert(Commitment)
            .values(**columns)
            .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
            .returning(Commitment.id)
        )
        return None if inserted is None else await self.commitment(columns["tenant_id"], inserted)

    async def commitment(self, tenant_id: str, id: str) -> Commitment | None:
        return await self.session.get(Commitment, (tenant_id, id))

    async def commitments(self, customer_ids: Iterable[str]) -> list[CommitmentState]:
        """The commitments of these customers with what invoices drew of each (draws less
        reversals) and whether it was trued up (and by which invoice)."""
        drawn = func.coalesce(
            func.sum(CommitmentEntry.amount).filter(CommitmentEntry.kind != "trued_up"), 0
        )
        trued = func.count().filter(CommitmentEntry.kind == "trued_up")
        invoice = func.max(CommitmentEntry.invoice_id).filter(CommitmentEntry.kind == "trued_up")
        sums = (
            select(
                CommitmentEntry.tenant_id,
                CommitmentEntry.commitment_id,
                drawn.label("drawn"),
                trued.label("trued"),
                invoice.label("invoice"),
            )
            .group_by(CommitmentEntry.tenant_id, CommitmentEntry.commitment_id)
            .subquery()
        )
        rows = await self.session.execute(
            select(Commitment, sums.c.drawn, sums.c.trued, sums.c.invoice)
            .outerjoin(
                sums,
                (sums.c.tenant_id == Commitment.tenant_id)
                & (sums.c.commitment_id == Commitment.id),
            )
            .where(Commitment.customer_id.in_(set(customer_ids)))
            .order_by(Commitment.start, Commitment.id)
        )
        return [CommitmentState(c, -int(d or 0), bool(t), i) for c, d, t, i in rows]

    async def add_commitment_entries(self, rows: Sequence[dict[str, Any]]) -> int:
        """Append commitment entries (one whose key was written before is skipped)."""
        if not rows:
            return 0
        written = await self.session.scalars(
            insert(CommitmentEntry)
            .values(list(rows))
            .on_conflict_do_nothing(constraint="uq_commitment_entries_key")
            .returning(CommitmentEntry.seq)
        )
        return len(list(written))

    async def commitment_entries_of_invoice(
        self, tenant_id: str, invoice_id: str
    ) -> list[CommitmentEntry]:
        return list(
            await self.session.scalars(
                select(CommitmentEntry).where(
                    CommitmentEntry.tenant_id == tenant_id,
                    CommitmentEntry.invoice_id == invoice_id,
                    CommitmentEntry.kind == "drawn",
                )
            )
        )

    async def commitments_due(
        self,
        now: datetime,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[Commitment]:
        """Commitments whose term ended by ``now``, not trued up yet, whose customer has no
        draft and no live subscription period starting in the term any more (every invoice
        that draws on it is final), leaving out the ones ``job`` quarantined."""
        trued = select(CommitmentEntry.seq).where(
            CommitmentEntry.tenant_id == Commitment.tenant_id,
            CommitmentEntry.key == func.concat("trued_up:", Commitment.id),
        )
        open_draft = select(Invoice.id).where(
            Invoice.customer_id == Commitment.customer_id,
            Invoice.status == "draft",
            Invoice.period_start < Commitment.end,
        )
        open_period = select(Subscription.id).where(
            Subscription.customer_id == Commitment.customer_id,
            Subscription.status == "active",
            Subscription.current_period_start < Commitment.end,
        )
        q = select(Commitment).where(
            Commitment.end <= now,
            ~trued.exists(),
            ~open_draft.exists(),
            ~open_period.exists(),
            not_quarantined(job, "commitment", Commitment.tenant_id, Commitment.id),
        )
        if only is not None:
            q = q.where(tuple_(Commitment.tenant_id, Commitment.id).in_(only))
        q = q.order_by(Commitment.end, Commitment.tenant_id, Commitment.id).limit(limit)
        return list(await self.session.scalars(q))

    # automatic top-ups ----------------------------------------------------------------

    async def set_auto_top_up(self, values: dict[str, Any]) -> None:
        """Set a customer's automatic top-up (armed again)."""
        changes = {k: v for k, v in values.items() if k not in ("tenant_id", "customer_id")}
        stmt = insert(AutoTopUp).values(**values, armed=True, count=0)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "customer_id"], set_=changes | {"armed": True}
            )
        )

    async def auto_top_up(self, tenant_id: str, customer_id: str) -> AutoTopUp | None:
        return await self.session.get(AutoTopUp, (tenant_id, customer_id))

    async def claim_auto_top_ups(
        self,
        limit: int,
        after: tuple[str, str] | None,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[AutoTopUp]:
        """Enabled automatic top-ups in key order after ``after`` (any tenant), locked (rows
        another replica holds are skipped), leaving out the ones ``job`` quarantined."""
        q = select(AutoTopUp).where(
            AutoTopUp.enabled,
            not_quarantined(job, "customer", AutoTopUp.tenant_id, AutoTopUp.customer_id),
        )
        if after is not None:
            q = q.where(tuple_(AutoTopUp.tenant_id, AutoTopUp.customer_id) > tuple_(*after))
        if only is not None:
            q = q.where(tuple_(AutoTopUp.tenant_id, AutoTopUp.customer_id).in_(only))
        q = q.order_by(AutoTopUp.tenant_id, AutoTopUp.customer_id).limit(limit)
        return list(await self.session.scalars(q.with_for_update(skip_locked=True)))

    async def arm(self, row: AutoTopUp, armed: bool, *, fired: bool = False) -> None:
        row.armed = armed
        if fired:
            row.count += 1

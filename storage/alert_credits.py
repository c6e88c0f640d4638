"""Credit balance rules' storage: a state per (rule, customer, threshold) — whether the
customer's projected balance is below the threshold (alerted, not re-armed yet) and how many
times it fell below it, which names each crossing's alert — and what those rules read of
invoicing's tables (the customers with credit grants)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import BigInteger, Boolean, ForeignKey, String, exists, or_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.alerts import AlertRuleRow
from storage.db import Base
from storage.invoicing import Customer
from storage.invoicing.credits import CreditGrant
from storage.quarantine import not_quarantined
from workers.alerts.service.domain import CreditLevel


class AlertCreditStateRow(Base):
    """Whether a customer's projected credit balance is below a threshold of a rule."""

    __tablename__ = "alert_credit_states"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    rule_id: Mapped[str] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(
        String(256), primary_key=True, comment="the customer's external id"
    )
    threshold: Mapped[int] = mapped_column(BigInteger, primary_key=True, comment="minor units")
    below: Mapped[bool] = mapped_column(Boolean, comment="alerted, not re-armed yet")
    crossings: Mapped[int] = mapped_column(comment="downward crossings so far")


class CreditAlertsRepository:
    """Every method takes the tenant (or rows that carry it): no cross-tenant reads."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def credit_fell(self, levels: Sequence[CreditLevel]) -> list[CreditLevel]:
        """Mark each (tenant, rule, subject, threshold) below its threshold; those that were
        not already (a new crossing) come back with their crossing's number. Atomic per
        row: of two transactions seeing the same crossing, one gets it."""
        return await self._credit_levels(
            """
            INSERT INTO alert_credit_states AS s
                (tenant_id, rule_id, subject, threshold, below, crossings)
            SELECT w.t, w.r, w.s, w.th, true, 1
            FROM unnest(CAST(:t AS text[]), CAST(:r AS text[]), CAST(:s AS text[]),
                        CAST(:th AS bigint[])) AS w(t, r, s, th)
            ORDER BY 1, 2, 3, 4
            ON CONFLICT (tenant_id, rule_id, subject, threshold) DO UPDATE
                SET below = true, crossings = s.crossings + 1
                WHERE NOT s.below
            RETURNING s.tenant_id, s.rule_id, s.subject, s.threshold, s.crossings
            """,
            levels,
        )

    async def credit_rose(self, levels: Sequence[CreditLevel]) -> list[CreditLevel]:
        """Re-arm each (tenant, rule, subject, threshold) that was below: those come back
        with the number of the crossing that ended."""
        return await self._credit_levels(
            """
            UPDATE alert_credit_states AS s SET below = false
            FROM unnest(CAST(:t AS text[]), CAST(:r AS text[]), CAST(:s AS text[]),
                        CAST(:th AS bigint[])) AS w(t, r, s, th)
            WHERE s.tenant_id = w.t AND s.rule_id = w.r AND s.subject = w.s
              AND s.threshold = w.th AND s.below
            RETURNING s.tenant_id, s.rule_id, s.subject, s.threshold, s.crossings
            """,
            levels,
        )

    async def _credit_levels(self, sql: str, levels: Sequence[CreditLevel]) -> list[CreditLevel]:
        if not levels:
            return []
        rows = await self.session.execute(
            text(sql),
            {
                "t": [lv.tenant_id for lv in levels],
                "r": [lv.rule_id for lv in levels],
                "s": [lv.subject for lv in levels],
                "th": [lv.threshold for lv in levels],
            },
        )
        return [
            CreditLevel(r.tenant_id, r.rule_id, r.subject, r.threshold, r.crossings) for r in rows
        ]

    async def credit_customers(self, subjects: Iterable[tuple[str, str]]) -> list[Customer]:
        """The customers of these (tenant, external id) that have a credit grant (in any
        state): invoicing's rows, as its face ``credit_balances`` takes them."""
        pairs = sorted(set(subjects))
        if not pairs:
            return []
        c, g = Customer, CreditGrant
        rows = await self.session.scalars(
            select(c)
            .where(
                tuple_(c.tenant_id, c.external_id).in_(pairs),
                exists().where(g.tenant_id == c.tenant_id, g.customer_id == c.id),
            )
            .order_by(c.tenant_id, c.external_id)
        )
        return list(rows)

    async def credit_sweep(
        self,
        kinds: Sequence[str],
        limit: int,
        after: tuple[str, str] | None,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[tuple[str, str]]:
        """The next ``limit`` customers (tenant, external id) after ``after`` in that order
        that have a credit grant (in any state) and a rule of ``kinds`` looking at them (on
        every customer or on this one), leaving out those ``job`` quarantined; ``only``:
        just these. Nothing is locked: evaluating a customer twice (two replicas) raises
        nothing twice, the crossing state is kept once."""
        c, g, r = Customer, CreditGrant, AlertRuleRow
        q = select(c.tenant_id, c.external_id).where(
            # the tenants with such rules first: the others' customers are never scanned
            c.tenant_id.in_(select(r.tenant_id).where(r.kind.in_(kinds))),
            exists().where(
                r.tenant_id == c.tenant_id,
                r.kind.in_(kinds),
                or_(r.subject.is_(None), r.subject == c.external_id),
            ),
            exists().where(g.tenant_id == c.tenant_id, g.customer_id == c.id),
            not_quarantined(job, "customer", c.tenant_id, c.external_id),
        )
        if after is not None:
            q = q.where(tuple_(c.tenant_id, c.external_id) > tuple_(*after))
        if only is not None:
            q = q.where(tuple_(c.tenant_id, c.external_id).in_(list(only)))
        q = q.order_by(c.tenant_id, c.external_id).limit(limit)
        return [(t, s) for t, s in await self.session.execute(q)]

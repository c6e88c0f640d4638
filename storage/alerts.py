"""Alert rules and alerts.

An alert is unique per (tenant, rule, dedupe key): the dedupe key names the subject, the
period and the threshold (or the failure it is about), so inserting the same alert twice,
from a redelivery, a replay or another replica, inserts nothing the second time.

The state of credit balance rules and their reads of credits are in ``alert_credits.py``.

ORM models and the repository; the types it hands over (``RuleDef``, ``Alert``, ``Period``,
``OverdueInvoice``, ``CreditLevel``) are the alerts service's
(workers/alerts/service/domain.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    column,
    func,
    literal_column,
    select,
    table,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import ColumnClause

from storage.db import Base
from storage.quarantine import not_quarantined
from workers.alerts.service.domain import Alert, OverdueInvoice, Period, RuleDef


class AlertRuleRow(Base):
    __tablename__ = "alert_rules"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(
        String(64), comment="the meter key, the currency (spend), or the operational condition"
    )
    subject: Mapped[str | None] = mapped_column(String(256))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="RuleSpec JSON (exact decimals)")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AlertRow(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "rule_id", "dedupe", name="uq_alerts_once"),
        Index("ix_alerts_tenant_state", "tenant_id", "state", "raised_at"),
        Index("ix_alerts_about", "tenant_id", "about_type", "about_id"),
        Index("ix_alerts_open_periods", "period_end", postgresql_where="state <> 'resolved'"),
    )

    id: Mapped[str] = mapped_column(String(35), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    rule_id: Mapped[str] = mapped_column(String(64))
    rule_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    condition: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(256))
    dedupe: Mapped[str] = mapped_column(String(1024))
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    threshold: Mapped[Decimal | None] = mapped_column(Numeric)
    value: Mapped[Decimal | None] = mapped_column(Numeric)
    unit: Mapped[str | None] = mapped_column(String(32))
    about_type: Mapped[str] = mapped_column(String(32))
    about_id: Mapped[str] = mapped_column(String(512))
    about_href: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), comment="firing | acknowledged | resolved")
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution: Mapped[str | None] = mapped_column(Text)


_ALERT_COLUMNS = [f.name for f in fields(Alert)]
_RETURNING = ", ".join(_ALERT_COLUMNS)


def _alert(r: Any) -> Alert:
    return Alert(**{c: getattr(r, c) for c in _ALERT_COLUMNS})


def _rule(r: AlertRuleRow) -> RuleDef:
    return RuleDef(
        tenant_id=r.tenant_id,
        key=r.key,
        id=r.id,
        kind=r.kind,
        target=r.target,
        subject=r.subject,
        spec=r.spec,
        name=r.name,
        created_at=r.created_at,
    )


_INSERT_ALERTS = text(
    f"""
    INSERT INTO alerts AS a ({_RETURNING})
    SELECT * FROM unnest(
        CAST(:id AS text[]), CAST(:tenant_id AS text[]), CAST(:rule_id AS text[]),
        CAST(:rule_key AS text[]), CAST(:kind AS text[]), CAST(:condition AS text[]),
        CAST(:subject AS text[]), CAST(:dedupe AS text[]), CAST(:period_start AS timestamptz[]),
        CAST(:period_end AS timestamptz[]), CAST(:threshold AS numeric[]),
        CAST(:value AS numeric[]), CAST(:unit AS text[]), CAST(:about_type AS text[]),
        CAST(:about_id AS text[]), CAST(:about_href AS text[]), CAST(:message AS text[]),
        CAST(:state AS text[]), CAST(:raised_at AS timestamptz[]),
        CAST(:acknowledged_at AS timestamptz[]), CAST(:resolved_at AS timestamptz[]),
        CAST(:resolution AS text[]))
    ON CONFLICT ON CONSTRAINT uq_alerts_once DO NOTHING
    RETURNING {_RETURNING}
    """
)


class AlertsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- rules ------------------------------------------------------------------------

    async def add_rule(self, rule: RuleDef) -> RuleDef | None:
        """Insert; on a key that exists, return the existing rule instead (None = inserted)."""
        existing = await self.rule(rule.tenant_id, rule.key)
        if existing is not None:
            return existing
        self.session.add(
            AlertRuleRow(
                tenant_id=rule.tenant_id,
                key=rule.key,
                id=rule.id,
                name=rule.name,
                kind=rule.kind,
                target=rule.target,
                subject=rule.subject,
                spec=rule.spec,
            )
        )
        await self.session.flush()
        return None

    async def rule(self, tenant_id: str, key: str) -> RuleDef | None:
        row = await self.session.get(AlertRuleRow, (tenant_id, key))
        return _rule(row) if row is not None else None

    async def rules(self, tenant_id: str) -> list[RuleDef]:
        rows = await self.session.scalars(
            select(AlertRuleRow)
            .where(AlertRuleRow.tenant_id == tenant_id)
            .order_by(AlertRuleRow.key)
        )
        return [_rule(r) for r in rows]

    async def delete_rule(self, tenant_id: str, key: str) -> RuleDef | None:
        row = await self.session.get(AlertRuleRow, (tenant_id, key))
        if row is None:
            return None
        await self.session.delete(row)
        await self.session.flush()
        return _rule(row)

    async def rules_for(
        self, tenants: Iterable[str], kinds: Sequence[str], targets: Iterable[str] | None = None
    ) -> list[RuleDef]:
        """Rules of ``kinds`` of these tenants (and, if given, on one of ``targets``)."""
        query = select(AlertRuleRow).where(
            AlertRuleRow.tenant_id.in_(list(tenants)), AlertRuleRow.kind.in_(kinds)
        )
        if targets is not None:
            query = query.where(AlertRuleRow.target.in_(list(targets)))
        rows = await self.session.scalars(query.order_by(AlertRuleRow.tenant_id, AlertRuleRow.key))
        return [_rule(r) for r in rows]

    # --- alerts -----------------------------------------------------------------------

    async def raise_alerts(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Insert ``alerts``; return those that were new (one upsert, any number of rows)."""
        if not alerts:
            return []
        params = {c: [getattr(a, c) for a in alerts] for c in _ALERT_COLUMNS}
        rows = await self.session.execute(_INSERT_ALERTS, params)
        return [_alert(r) for r in rows]

    async def alert(self, tenant_id: str, alert_id: str, *, lock: bool = False) -> Alert | None:
        query = select(AlertRow).where(AlertRow.tenant_id == tenant_id, AlertRow.id == alert_id)
        if lock:
            query = query.with_for_update()
        row = await self.session.scalar(query)
        return _alert(row) if row is not None else None

    async def list_alerts(
        self,
        tenant_id: str,
        *,
        states: Sequence[str],
        rule: str | None = None,
        subject: str | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[Alert]:
        """Newest first; ``before`` is the (raised_at, id) of the last alert of a page."""
        query = select(AlertRow).where(AlertRow.tenant_id == tenant_id)
        if states:
            query = query.where(AlertRow.state.in_(list(states)))
        if rule is not None:
            query = query.where(AlertRow.rule_key == rule)
        if subject is not None:
            query = query.where(AlertRow.subject == subject)
        if before is not None:
            query = query.where(
                func.row(AlertRow.raised_at, AlertRow.id) < func.row(before[0], before[1])
            )
        query = query.order_by(AlertRow.raised_at.desc(), AlertRow.id.desc()).limit(limit)
        return [_alert(r) for r in await self.session.scalars(query)]

    async def acknowledge(self, tenant_id: str, alert_id: str, at: datetime) -> Alert | None:
        """firing -> acknowledged; None if the alert was not firing."""
        return await self._one(
            "state = 'acknowledged', acknowledged_at = :at",
            "tenant_id = :tenant AND id = :id AND state = 'firing'",
            {"tenant": tenant_id, "id": alert_id, "at": at},
        )

    async def resolve(
        self, tenant_id: str, alert_id: str, at: datetime, resolution: str
    ) -> Alert | None:
        """An open alert -> resolved; None if it was resolved already."""
        return await self._one(
            "state = 'resolved', resolved_at = :at, resolution = :why",
            "tenant_id = :tenant AND id = :id AND state <> 'resolved'",
            {"tenant": tenant_id, "id": alert_id, "at": at, "why": resolution},
        )

    async def resolve_rule(self, tenant_id: str, rule_id: str, at: datetime) -> list[Alert]:
        return await self._transition(
            "state = 'resolved', resolved_at = :at, resolution = 'rule deleted'",
            "tenant_id = :tenant AND rule_id = :rule AND state <> 'resolved'",
            {"tenant": tenant_id, "rule": rule_id, "at": at},
        )

    async def resolve_about(
        self,
        refs: Sequence[tuple[str, str, str]],
        conditions: Sequence[str],
        at: datetime,
        resolution: str,
    ) -> list[Alert]:
        """Resolve the open alerts of ``conditions`` about any of (tenant, about_type, id)."""
        if not refs:
            return []
        return await self._transition(
            "state = 'resolved', resolved_at = :at, resolution = :why",
            """state <> 'resolved' AND condition = ANY(CAST(:conditions AS text[]))
               AND (tenant_id, about_type, about_id) IN (
                   SELECT * FROM unnest(CAST(:t AS text[]), CAST(:ty AS text[]),
                                        CAST(:i AS text[])))""",
            {
                "at": at,
                "why": resolution,
                "conditions": list(conditions),
                "t": [r[0] for r in refs],
                "ty": [r[1] for r in refs],
                "i": [r[2] for r in refs],
            },
        )

    async def ended_periods(
        self, now: datetime, limit: int, *, job: str, only: Sequence[str] | None = None
    ) -> list[tuple[str, str]]:
        """Lock open period-scoped alerts whose period is over (oldest first), leaving out
        those ``job`` quarantined; ``only``: just these alert ids. (tenant, alert id) pairs;
        resolve them with ``resolve_claimed``."""
        a = AlertRow
        q = select(a.tenant_id, a.id).where(
            a.state != "resolved",
            a.period_end <= now,
            not_quarantined(job, "alert", a.tenant_id, a.id),
        )
        if only is not None:
            q = q.where(a.id.in_(list(only)))
        q = q.order_by(a.period_end).limit(limit).with_for_update(skip_locked=True)
        return [(r.tenant_id, r.id) for r in await self.session.execute(q)]

    async def settled_invoices(
        self, limit: int, *, job: str, only: Sequence[str] | None = None
    ) -> list[tuple[str, str, str]]:
        """Lock open invoice alerts whose invoice is paid, void or uncollectible (a dunning
        alert stays open on an uncollectible invoice), leaving out those ``job``
        quarantined; ``only``: just these alert ids. (tenant, alert id, invoice status)."""
        a = AlertRow
        i = table("invoices", column("tenant_id"), column("id"), column("status"))
        q = (
            select(a.tenant_id, a.id, i.c.status)
            .join(i, (i.c.tenant_id == a.tenant_id) & (i.c.id == a.about_id))
            .where(
                a.state != "resolved",
                a.about_type == "invoice",
                i.c.status.in_(("paid", "void", "uncollectible")),
                ~((a.condition == "dunning_exhausted") & (i.c.status == "uncollectible")),
                not_quarantined(job, "alert", a.tenant_id, a.id),
            )
        )
        if only is not None:
            q = q.where(a.id.in_(list(only)))
        q = q.limit(limit).with_for_update(of=a, skip_locked=True)
        return [(r.tenant_id, r.id, r.status) for r in await self.session.execute(q)]

    async def resolve_claimed(
        self, ids: Sequence[str], resolutions: Sequence[str], at: datetime
    ) -> list[Alert]:
        """Resolve the open alerts ``ids`` (locked by a claim), each with its resolution."""
        if not ids:
            return []
        return await self._transition(
            "state = 'resolved', resolved_at = :at, resolution = w.why",
            "a.id = w.id AND a.state <> 'resolved'",
            {"at": at, "ids": list(ids), "whys": list(resolutions)},
            extra_from="unnest(CAST(:ids AS text[]), CAST(:whys AS text[])) AS w(id, why)",
        )

    async def _one(self, assignments: str, where: str, params: dict[str, Any]) -> Alert | None:
        changed = await self._transition(assignments, where, params)
        return changed[0] if changed else None

    async def _transition(
        self, assignments: str, where: str, params: dict[str, Any], extra_from: str = ""
    ) -> list[Alert]:
        returning = ", ".join(f"a.{c}" for c in _ALERT_COLUMNS)
        sql = (
            f"UPDATE alerts a SET {assignments} "
            + (f"FROM {extra_from} " if extra_from else "")
            + f"WHERE {where} RETURNING {returning}"
        )
        rows = await self.session.execute(text(sql), params)
        return [_alert(r) for r in rows]

    async def resolve_dedupes(
        self, keys: Sequence[tuple[str, str, str]], at: datetime, resolution: str
    ) -> list[Alert]:
        """Resolve the open alerts of these (tenant, rule id, dedupe key)."""
        if not keys:
            return []
        return await self._transition(
            "state = 'resolved', resolved_at = :at, resolution = :why",
            """state <> 'resolved' AND (tenant_id, rule_id, dedupe) IN (
                   SELECT * FROM unnest(CAST(:t AS text[]), CAST(:r AS text[]),
                                        CAST(:d AS text[])))""",
            {
                "at": at,
                "why": resolution,
                "t": [k[0] for k in keys],
                "r": [k[1] for k in keys],
                "d": [k[2] for k in keys],
            },
        )

    # --- what the rules look at in other contexts' read models -------------------------

    async def current_periods(
        self, subjects: Iterable[tuple[str, str]], at: datetime
    ) -> dict[tuple[str, str], Period]:
        """The active subscription period covering ``at`` of each (tenant, subject)."""
        pairs = list(subjects)
        if not pairs:
            return {}
        rows = await self.session.execute(
            text(
                """
                SELECT s.tenant_id, c.external_id AS subject, s.current_period_start AS start,
                       s.current_period_end AS "end", p.id AS plan_id, p.spec AS plan_spec,
                       p.currency,
                       CASE WHEN c.tax_exempt THEN NULL ELSE c.tax_rate END AS tax_rate,
                       cfg.rounding, c.tax_rates, c.tax_status
                FROM unnest(CAST(:tenants AS text[]), CAST(:subjects AS text[])) AS w(t, s)
                JOIN customers c ON c.tenant_id = w.t AND c.external_id = w.s
                JOIN subscriptions s ON s.customer_id = c.id AND s.tenant_id = c.tenant_id
                JOIN plans p ON p.id = s.plan_id
                LEFT JOIN invoicing_configs cfg ON cfg.tenant_id = s.tenant_id
                WHERE s.status = 'active' AND s.current_period_start <= :at
                  AND s.current_period_end > :at
                ORDER BY s.current_period_start
                """
            ),
            {"tenants": [t for t, _ in pairs], "subjects": [s for _, s in pairs], "at": at},
        )
        out: dict[tuple[str, str], Period] = {}
        for r in rows:
            period = Period(**r._mapping)
            out[(period.tenant_id, period.subject)] = period
        return out

    async def overdue_invoices(
        self,
        now: datetime,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[OverdueInvoice]:
        """Finalized invoices past their due date, unpaid, of tenants with an
        ``invoice_overdue`` rule that has not alerted about them yet, leaving out those
        ``job`` quarantined; ``only``: just these (tenant, invoice) pairs."""
        tenant_id: ColumnClause[Any] = literal_column("i.tenant_id")
        invoice_id: ColumnClause[Any] = literal_column("i.id")
        q = (
            select(
                tenant_id.label("tenant_id"),
                invoice_id.label("invoice_id"),
                literal_column("i.number").label("number"),
                literal_column("c.external_id").label("subject"),
                literal_column("i.due_at").label("due_at"),
                literal_column("i.total - i.amount_paid - i.amount_credited").label("amount_due"),
                literal_column("i.currency").label("currency"),
            )
            .select_from(text("invoices i JOIN customers c ON c.id = i.customer_id"))
            .where(
                text(
                    """i.status = 'finalized' AND i.due_at < :now
                  AND i.total > i.amount_paid + i.amount_credited
                  AND EXISTS (
                      SELECT 1 FROM alert_rules r
                      WHERE r.tenant_id = i.tenant_id AND r.kind = 'operational'
                        AND r.target = 'invoice_overdue'
                        AND NOT EXISTS (
                            SELECT 1 FROM alerts a
                            WHERE a.tenant_id = r.tenant_id AND a.rule_id = r.id
                              AND a.dedupe = 'invoice_overdue:' || i.id))"""
                ).bindparams(now=now),
                not_quarantined(job, "invoice", tenant_id, invoice_id),
            )
            .order_by(literal_column("i.due_at"))
            .limit(limit)
        )
        if only is not None:
            q = q.where(tuple_(tenant_id, invoice_id).in_(list(only)))
        rows = await self.session.execute(q)
        return [OverdueInvoice(**r._mapping) for r in rows]

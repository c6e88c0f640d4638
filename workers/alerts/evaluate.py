"""Rules against what changed: set-based reads of the read models, the pure service decides.

One batch of ``usage.totals_changed`` events costs a handful of queries whatever its size:
the rules of its tenants, the subjects' current periods, the meters, and the period totals
(``UsageRepository.period_totals``) of every (meter, subject, period) a rule looks at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from schemas.metering import UsageTotalsChanged
from schemas.pricing import PlanSpec
from storage.alerts import AlertsRepository
from storage.metering import MeterRepository, UsageRepository
from workers import invoicing, metering
from workers.alerts import service
from workers.alerts.service import Alert, Clock, Period, RuleDef
from workers.runtime import Tx

_SPECS: dict[str, PlanSpec] = {}  # parsed plan specs by plan id: plans never change


def plan_of(p: Period) -> PlanSpec:
    spec = _SPECS.get(p.plan_id)
    if spec is None:
        if len(_SPECS) > 10_000:
            _SPECS.clear()
        spec = _SPECS[p.plan_id] = PlanSpec.model_validate(p.plan_spec)
    return spec


@dataclass(frozen=True)
class Touched:
    """A (tenant, subject, meter) whose total changed in the hour starting at ``hour``."""

    tenant_id: str
    subject: str
    meter: str
    hour: datetime

    @property
    def key(self) -> tuple[str, str]:
        return self.tenant_id, self.subject


def touched(events: Sequence[UsageTotalsChanged]) -> list[Touched]:
    seen = {
        Touched(e.tenantid, e.data.subject, e.data.meter, e.data.period_start): None for e in events
    }
    return list(seen)


class UsageRules:
    """Evaluates usage-threshold, spend and anomaly rules for touched totals."""

    def __init__(self, tx: Tx, clock: Clock) -> None:
        self.tx = tx
        self.clock = clock
        self.alerts = tx.repo(AlertsRepository)
        self.usage = tx.repo(UsageRepository)

    async def evaluate(self, changes: Sequence[Touched]) -> list[Alert]:
        """The alerts these changes raise (not yet stored)."""
        if not changes:
            return []
        rules = await self.alerts.rules_for({c.tenant_id for c in changes}, service.PERIOD_KINDS)
        if not rules:
            return []
        now = self.clock()
        by_meter: dict[tuple[str, str], list[RuleDef]] = {}
        spend: dict[str, list[RuleDef]] = {}
        for r in rules:
            if r.kind == "spend_threshold":
                spend.setdefault(r.tenant_id, []).append(r)
            else:
                by_meter.setdefault((r.tenant_id, r.target), []).append(r)
        # usage of a customer invoiced to its parent changes its payer's spend
        payers = await invoicing.payers(
            self.tx, {(c.tenant_id, c.subject) for c in changes if c.tenant_id in spend}
        )
        spending = [
            *changes,
            *(replace(c, subject=payers[c.key]) for c in changes if c.key in payers),
        ]
        watched = [
            c
            for c in changes
            if any(service.applies(r, c.subject) for r in by_meter.get((c.tenant_id, c.meter), []))
        ]
        spent = [
            c
            for c in spending
            if any(service.applies(r, c.subject) for r in spend.get(c.tenant_id, []))
        ]
        if not watched and not spent:
            return []
        periods = await self.alerts.current_periods(
            {(c.tenant_id, c.subject) for c in [*watched, *spent]}, now
        )
        meters = await self.tx.repo(MeterRepository).by_keys(
            {(c.tenant_id, c.meter) for c in watched}
        )
        out: list[Alert] = []
        out += await self._thresholds(watched, by_meter, periods, meters, now)
        out += await self._anomalies(watched, by_meter, meters, now)
        out += await self._spend(spent, spend, periods, now)
        return service.with_ids(out)

    def _period(
        self, c: Touched, periods: dict[tuple[str, str], Period], now: datetime
    ) -> tuple[datetime, datetime] | None:
        """The subject's current period, if the touched hour is in it (late usage of a
        closed period raises nothing: it is billed as an adjustment later)."""
        p = periods.get((c.tenant_id, c.subject))
        start, end = (p.start, p.end) if p is not None else service.calendar_month(now)
        return (start, end) if service.in_period(c.hour, start, end) else None

    async def _thresholds(
        self,
        changes: Sequence[Touched],
        by_meter: dict[tuple[str, str], list[RuleDef]],
        periods: dict[tuple[str, str], Period],
        meters: dict[tuple[str, str], metering.MeterDef],
        now: datetime,
    ) -> list[Alert]:
        wanted: dict[tuple[str, str, str, datetime], tuple[Touched, tuple[datetime, datetime]]]
        wanted = {}
        for c in changes:
            rules = [
                r
                for r in by_meter.get((c.tenant_id, c.meter), [])
                if r.kind == "usage_threshold" and service.applies(r, c.subject)
            ]
            period = self._period(c, periods, now)
            if rules and period is not None and (c.tenant_id, c.meter) in meters:
                wanted[(c.tenant_id, c.meter, c.subject, period[0])] = (c, period)
        if not wanted:
            return []
        items = list(wanted.values())
        totals = await self.usage.period_totals(
            [
                metering.PeriodKey(
                    meters[(c.tenant_id, c.meter)], c.subject, *invoicing.usage_window(*p)
                )
                for c, p in items
            ]
        )
        out: list[Alert] = []
        for (c, period), total in zip(items, totals, strict=True):
            p = periods.get((c.tenant_id, c.subject))
            included = service.included_quantity(plan_of(p), c.meter) if p is not None else None
            for r in by_meter[(c.tenant_id, c.meter)]:
                if r.kind == "usage_threshold" and service.applies(r, c.subject):
                    out += service.usage_alerts(r, c.subject, period, total, included, now)
        return out

    async def _anomalies(
        self,
        changes: Sequence[Touched],
        by_meter: dict[tuple[str, str], list[RuleDef]],
        meters: dict[tuple[str, str], metering.MeterDef],
        now: datetime,
    ) -> list[Alert]:
        pending: list[tuple[Touched, list[RuleDef]]] = []
        keys: list[metering.PeriodKey] = []
        for c in changes:
            rules = [
                r
                for r in by_meter.get((c.tenant_id, c.meter), [])
                if r.kind == "anomaly" and service.applies(r, c.subject)
            ]
            meter = meters.get((c.tenant_id, c.meter))
            if not rules or meter is None or not service.evaluates_anomaly(c.hour, now):
                continue
            pending.append((c, rules))
            for hour in [*service.anomaly_hours(c.hour), c.hour]:
                keys.append(metering.PeriodKey(meter, c.subject, hour, hour + service.HOUR))
        if not pending:
            return []
        values = await self.usage.period_totals(keys)
        step = service.ANOMALY_DAYS + 1
        out: list[Alert] = []
        for i, (c, rules) in enumerate(pending):
            *history, value = values[i * step : (i + 1) * step]
            for r in rules:
                alert = service.anomaly_alert(r, c.subject, c.hour, value, history, now)
                if alert is not None:
                    out.append(alert)
        return out

    async def _spend(
        self,
        changes: Sequence[Touched],
        spend: dict[str, list[RuleDef]],
        periods: dict[tuple[str, str], Period],
        now: datetime,
    ) -> list[Alert]:
        """Spend is the invoice-to-be, computed as invoicing computes a draft: only subjects
        with a subscription have one."""
        subjects: dict[tuple[str, str], Period] = {}
        for c in changes:
            p = periods.get((c.tenant_id, c.subject))
            if p is None or not service.in_period(c.hour, p.start, p.end):
                continue
            if any(
                service.applies(r, c.subject) and r.target == p.currency
                for r in spend.get(c.tenant_id, [])
            ):
                subjects[(c.tenant_id, c.subject)] = p
        if not subjects:
            return []
        items = list(subjects.values())
        amounts = await invoicing.draft_totals(
            self.tx,
            [
                invoicing.DraftPeriod(
                    p.tenant_id,
                    p.subject,
                    plan_of(p),
                    p.currency,
                    p.start,
                    p.end,
                    p.tax_rate,
                    p.rounding,
                    p.tax_rates,
                    p.tax_status,
                )
                for p in items
            ],
        )
        out: list[Alert] = []
        for p, amount in zip(items, amounts, strict=True):
            for r in spend[p.tenant_id]:
                if service.applies(r, p.subject) and r.target == p.currency:
                    out += service.spend_alerts(r, p.subject, (p.start, p.end), amount, now)
        return out

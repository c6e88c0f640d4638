"""Usage against metered features' limits: a batch of ``usage.totals_changed`` costs a
handful of queries whatever its size — the tenants' metered meters, the customers'
snapshots, the meters, the period totals (``UsageRepository.period_totals``, as alerts and
invoicing count them), one upsert of the usage read model, one insert of the limit hits.

No inbox: the usage set is the period's total read from metering's read model (setting it
again changes nothing) and a limit hit is recorded once per customer, feature and period."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from schemas.metering import UsageTotalsChanged
from storage.entitlements import EntitlementRepository, UsageRow, UsageTotal
from storage.metering import MeterRepository, UsageRepository
from workers import invoicing, metering
from workers.entitlements import service
from workers.entitlements.announce import Key, record_limits
from workers.runtime import Tx


async def on_totals(tx: Tx, events: Sequence[UsageTotalsChanged], now: datetime) -> int:
    """Sets the usage of the touched customers' current periods and records the limits it
    reaches; returns how many usage rows were set."""
    touched = {(e.tenantid, e.data.subject, e.data.meter, e.data.period_start) for e in events}
    if not touched:
        return 0
    repo = tx.repo(EntitlementRepository)
    watched = await repo.metered_meters({t for t, _, _, _ in touched})
    touched = {x for x in touched if (x[0], x[2]) in watched}
    if not touched:
        return 0
    snaps = await repo.snapshots({(t, s) for t, s, _, _ in touched}, now)
    wanted: dict[tuple[str, str, str, datetime], datetime] = {}
    for t, s, m, hour in touched:
        for start, end in service.periods(snaps[(t, s)], now):
            first, last = invoicing.usage_window(start, end)
            if first <= hour < last:
                wanted[(t, s, m, start)] = end
    meters = await tx.repo(MeterRepository).by_keys({(t, m) for t, _, m, _ in wanted})
    items = [(k, end) for k, end in sorted(wanted.items()) if (k[0], k[2]) in meters]
    if not items:
        return 0
    totals = await tx.repo(UsageRepository).period_totals(
        [
            metering.PeriodKey(meters[(t, m)], s, *invoicing.usage_window(start, end))
            for (t, s, m, start), end in items
        ]
    )
    rows = [
        UsageTotal(t, s, m, start, end, total if total is not None else Decimal(0))
        for ((t, s, m, start), end), total in zip(items, totals, strict=True)
    ]
    await repo.set_usage(rows, now)
    fresh: dict[Key, list[UsageRow]] = {}
    for r in rows:
        fresh.setdefault((r.tenant_id, r.customer), []).append(
            UsageRow(
                tenant_id=r.tenant_id,
                customer=r.customer,
                meter=r.meter,
                period_start=r.period_start,
                period_end=r.period_end,
                usage=r.usage,
                updated_at=now,
            )
        )
    answers = {}
    for k, new in fresh.items():
        replaced = {(u.meter, u.period_start) for u in new}
        kept = [u for u in snaps[k].usage if (u.meter, u.period_start) not in replaced]
        answers[k] = service.evaluate(dataclasses.replace(snaps[k], usage=[*kept, *new]), now)
    await record_limits(tx, answers, now)
    return len(rows)

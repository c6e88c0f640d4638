"""Announcing customers: what they have now (``service.evaluate`` on their stored
snapshots) against what was last announced (``entitlement_standing``), and the events of
the difference, once. Set-based: one call for any number of customers costs a dozen
queries, whatever the number."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from schemas import topics
from schemas.entitlements import CustomerEntitlements
from schemas.envelope import CloudEvent
from storage.entitlements import EntitlementRepository, Hit, LimitHitRow
from workers.entitlements import service
from workers.entitlements.service import NEVER, Announced, Cause
from workers.runtime import Tx

Key = tuple[str, str]  # (tenant, customer external id)


def emit(tx: Tx, tenant_id: str, customer: str, events: Sequence[CloudEvent]) -> None:
    for e in events:
        tx.emit(e, topic=topics.EVENTS_ENTITLEMENTS, key=topics.partition_key(tenant_id, customer))


async def announce(tx: Tx, causes: Mapping[Key, Cause], now: datetime) -> int:
    """Announce these customers; returns how many changed."""
    if not causes:
        return 0
    repo = tx.repo(EntitlementRepository)
    keys = sorted(causes)
    snaps = await repo.snapshots(keys, now)
    before = await repo.standings(keys)
    answers = {k: service.evaluate(snaps[k], now) for k in keys}
    changed: list[tuple[str, str, str, list[str]]] = []
    for k in keys:
        row = before.get(k)
        was = Announced(row.status, tuple(row.features)) if row is not None else NEVER
        now_held = service.held(answers[k])
        if now_held == was:
            continue
        changed.append((k[0], k[1], now_held.status, list(now_held.features)))
        emit(tx, *k, service.access_events(k[0], answers[k], was, causes[k], now))
    await repo.save_standings(changed, now)
    await record_limits(tx, answers, now)
    await restore_limits(tx, answers, now)
    return len(changed)


async def record_limits(tx: Tx, answers: Mapping[Key, CustomerEntitlements], now: datetime) -> int:
    """Every metered feature whose limit is reached: its hit recorded and
    ``entitlement.limit_reached`` emitted, once per customer, feature and period (again
    if a restored hit is reached again)."""
    views = {(t, c, v.feature): v for (t, c), a in answers.items() for v in service.reached(a)}
    hits = [
        Hit(t, c, f, v.period_start, v.resets_at, v.usage, v.limit, v.limit_mode)
        for (t, c, f), v in views.items()
        if v.period_start and v.resets_at and v.usage is not None and v.limit is not None
        and v.limit_mode
    ]  # fmt: skip
    fresh = await tx.repo(EntitlementRepository).record_hits(hits, now)
    for h in fresh:
        emit(
            tx,
            h.tenant_id,
            h.customer,
            [
                service.limit_reached(
                    h.tenant_id, h.customer, views[(h.tenant_id, h.customer, h.feature)]
                )
            ],
        )
    return len(fresh)


async def restore_limits(
    tx: Tx, answers: Mapping[Key, CustomerEntitlements], now: datetime
) -> None:
    """Open hard limit hits that no longer deny in their period (the limit was raised by an
    override, a grant or a plan): ``entitlement.restored`` (limit_raised). A hit whose
    feature the customer lost, or whose period is no longer its current one, is closed
    silently (the period's end is announced by the tick, ``period_reset``)."""
    repo = tx.repo(EntitlementRepository)
    done: list[LimitHitRow] = []
    raised: dict[Key, list[str]] = {}
    for h in await repo.open_hits(answers):
        answer = answers[(h.tenant_id, h.customer)]
        view = next((v for v in answer.entitlements if v.feature == h.feature), None)
        denies = service.still_denies(view, h.period_start)
        if denies:
            continue
        if denies is None and h.period_end <= now:
            continue  # the tick's period_reset
        done.append(h)
        if denies is False:
            raised.setdefault((h.tenant_id, h.customer), []).append(h.feature)
    await repo.restore_hits(done, now)
    for (t, c), features in raised.items():
        emit(tx, t, c, [service.limit_restored(t, c, features, "limit_raised", now)])

"""Credit balance rules against the customers whose credit may have changed: set-based reads
(the rules of their tenants, the customers with grants, invoicing's ``credit_balances``),
the pure service decides, the repository keeps each crossing once.

A customer's projected balance falls as its usage arrives (``usage.totals_changed``) and
moves with its credit (``credit.granted``, ``credit.voided``, ``credit.applied``,
``credit.reversed``, ``credit.expired`` on the invoicing events topic): both are evaluated
here, as of now. So are the customers the sweep goes through (``jobs.CreditCursor``), for a
balance that falls with neither (a new subscription's flat fee, a new period, a grant past
its expiry before the expiry job wrote it)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from schemas.credits import (
    CreditApplied,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    CreditVoided,
)
from schemas.envelope import CloudEvent
from storage.alert_credits import CreditAlertsRepository
from storage.alerts import AlertsRepository
from workers import invoicing
from workers.alerts import service
from workers.alerts.service import Alert, CreditLevel, RuleDef
from workers.runtime import Tx

CREDIT_EVENTS = (CreditGranted, CreditVoided, CreditApplied, CreditReversed, CreditExpired)


def credit_subject(event: CloudEvent) -> tuple[str, str] | None:
    """The (tenant, customer) whose credit ``event`` changed, if it is a credit event."""
    if isinstance(event, CREDIT_EVENTS):
        return (event.tenantid, event.data.customer)
    return None


async def evaluate_credit(
    tx: Tx, subjects: Iterable[tuple[str, str]], now: datetime
) -> list[Alert]:
    """The alerts these customers' projected balances raise (stored) and those re-arming
    resolves: each crossing below a threshold raises one alert, however often it is seen;
    a balance at or above the threshold again resolves it and re-arms the threshold."""
    wanted = set(subjects)
    if not wanted:
        return []
    repo = tx.repo(AlertsRepository)
    rules = await repo.rules_for({t for t, _ in wanted}, service.CREDIT_KINDS)
    if not rules:  # the common case: one query, nothing else
        return []
    by_tenant: dict[str, list[RuleDef]] = {}
    for r in rules:
        by_tenant.setdefault(r.tenant_id, []).append(r)
    watched = {
        (t, s) for t, s in wanted if any(service.applies(r, s) for r in by_tenant.get(t, []))
    }
    if not watched:
        return []
    customers = await tx.repo(CreditAlertsRepository).credit_customers(watched)
    if not customers:
        return []
    balances = await invoicing.credit_balances(tx, customers, now)
    below: list[CreditLevel] = []
    above: list[CreditLevel] = []
    found: dict[tuple[str, str], invoicing.CreditBalance] = {}
    for b in balances:
        found[(b.tenant_id, b.customer)] = b
        for r in by_tenant.get(b.tenant_id, []):
            if service.credit_applies(r, b.customer, b.currency):
                lo, hi = service.credit_levels(r, b.customer, b.projected)
                below += lo
                above += hi
    by_id = {r.id: r for r in rules}
    raised = [
        service.credit_alert(
            by_id[lv.rule_id],
            lv,
            balance=found[(lv.tenant_id, lv.subject)].balance,
            pending=found[(lv.tenant_id, lv.subject)].pending,
            now=now,
        )
        for lv in await tx.repo(CreditAlertsRepository).credit_fell(below)
    ]
    rearmed = await tx.repo(CreditAlertsRepository).credit_rose(above)
    resolved = await repo.resolve_dedupes(
        [(lv.tenant_id, lv.rule_id, service.credit_dedupe(lv)) for lv in rearmed],
        now,
        service.REARMED,
    )
    return [*await repo.raise_alerts(raised), *resolved]

"""The alerts' domain types, and an alert's identity (what makes "exactly once" possible).

An alert is unique per (tenant, rule, dedupe key): its id is derived from them, so raising
the same alert twice (a redelivery, a replay, another replica) is one alert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from schemas.alerts import About


@dataclass(frozen=True)
class RuleDef:
    tenant_id: str
    key: str
    id: str
    kind: str
    target: str  # the meter key, the currency (spend), or the operational condition
    subject: str | None
    spec: dict[str, Any]  # RuleSpec JSON (exact decimals)
    name: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Alert:
    """An alert as the service, the repository and the views see it."""

    id: str
    tenant_id: str
    rule_id: str
    rule_key: str
    kind: str
    condition: str
    subject: str | None
    dedupe: str
    period_start: datetime | None
    period_end: datetime | None
    threshold: Decimal | None
    value: Decimal | None
    unit: str | None
    about_type: str
    about_id: str
    about_href: str
    message: str
    state: str  # firing | acknowledged | resolved
    raised_at: datetime
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None


@dataclass(frozen=True)
class Period:
    """A subject's current billing period, from its active subscription."""

    tenant_id: str
    subject: str
    start: datetime
    end: datetime
    plan_id: str
    plan_spec: dict[str, Any]
    currency: str
    tax_rate: Decimal | None
    rounding: str | None  # the tenant's invoicing rounding; None: invoicing's default
    tax_rates: list[str] | None = None  # the customer's tax rates by name
    tax_status: str = "taxable"


@dataclass(frozen=True)
class CreditLevel:
    """A threshold of a credit balance rule for one customer; ``crossings``: how many times
    its projected balance fell below it (as the state holds it)."""

    tenant_id: str
    rule_id: str
    subject: str
    threshold: int
    crossings: int = 0


@dataclass(frozen=True)
class OverdueInvoice:
    tenant_id: str
    invoice_id: str
    number: str | None
    subject: str
    due_at: datetime
    amount_due: int
    currency: str


def new_alert(
    rule: RuleDef,
    *,
    subject: str | None,
    dedupe: str,
    about: About,
    message: str,
    now: datetime,
    period: tuple[datetime, datetime] | None = None,
    threshold: Decimal | None = None,
    value: Decimal | None = None,
    unit: str | None = None,
) -> Alert:
    """A firing alert of ``rule``; its id is derived from (tenant, rule, ``dedupe``)."""
    digest = hashlib.sha256(f"{rule.tenant_id}\0{rule.id}\0{dedupe}".encode()).hexdigest()
    return Alert(
        id="al_" + digest[:32],
        tenant_id=rule.tenant_id,
        rule_id=rule.id,
        rule_key=rule.key,
        kind=rule.kind,
        condition=rule.target,
        subject=subject,
        dedupe=dedupe,
        period_start=period[0] if period else None,
        period_end=period[1] if period else None,
        threshold=threshold,
        value=value,
        unit=unit,
        about_type=about.type,
        about_id=about.id,
        about_href=about.href,
        message=message,
        state="firing",
        raised_at=now,
    )


def with_ids(alerts: Sequence[Alert]) -> list[Alert]:
    """Unique by id, first wins (two touched hours of one period raise the same alert)."""
    seen: dict[str, Alert] = {}
    for a in alerts:
        seen.setdefault(a.id, a)
    return list(seen.values())

"""Alerts domain logic. Pure: no I/O, no Kafka, no SQL; unit-tested directly."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import quote, urlencode

from schemas.alerts import (
    About,
    AlertAcknowledged,
    AlertData,
    AlertRaised,
    AlertResolved,
    Anomaly,
    CreateAlertRule,
    RuleSpec,
    SpendThreshold,
    UsageThreshold,
)
from schemas.currency import exponent
from schemas.envelope import CloudEvent, new_id
from schemas.ops import OpsQuarantined
from schemas.payments import DunningExhausted, PaymentFailed
from schemas.pricing import FlatPrice, PlanSpec
from schemas.webhooks import EndpointDisabled
from storage.alerts import Alert, OverdueInvoice, RuleDef
from workers.alerts.errors import RuleConflict

SOURCE = "billstream/alerts"
HOUR = timedelta(hours=1)
ANOMALY_DAYS = 7
PERIOD_KINDS = ("usage_threshold", "spend_threshold", "anomaly")
_PERCENT = Decimal(100)


# --- rules ---------------------------------------------------------------------------


def new_rule(command: CreateAlertRule) -> RuleDef:
    spec = command.data
    rule = spec.rule
    target: str
    if rule.kind == "operational":
        target = rule.condition
    elif rule.kind == "spend_threshold":
        target = rule.currency
    else:
        target = rule.meter
    return RuleDef(
        tenant_id=command.tenantid,
        key=spec.key,
        id=new_id(),
        kind=rule.kind,
        target=target,
        subject=getattr(rule, "subject", None),
        spec=spec.model_dump(mode="json"),
        name=spec.name,
    )


def ensure_same_definition(existing: RuleDef, wanted: RuleDef) -> None:
    if spec_of(existing) != spec_of(wanted):
        raise RuleConflict(
            f"alert rule {wanted.key!r} exists with a different definition; delete it first",
            field="key",
        )


_SPECS: dict[str, RuleSpec] = {}


def spec_of(rule: RuleDef) -> RuleSpec:
    """The rule's definition (parsed once per rule: a rule never changes)."""
    spec = _SPECS.get(rule.id)
    if spec is None:
        spec = RuleSpec.model_validate(rule.spec)
        if len(_SPECS) > 10_000:
            _SPECS.clear()
        _SPECS[rule.id] = spec
    return spec


def applies(rule: RuleDef, subject: str | None) -> bool:
    return rule.subject is None or rule.subject == subject


# --- periods -------------------------------------------------------------------------


def utc_text(t: datetime) -> str:
    """``t`` in UTC to the minute, whatever offset it came with (naive: taken as UTC)."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return f"{t:%Y-%m-%d %H:%M} UTC"


def hour_of(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def calendar_month(t: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month around ``t``: the period of subjects without a subscription."""
    start = t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def in_period(hour: datetime, start: datetime, end: datetime) -> bool:
    """Whether the hour starting at ``hour`` overlaps the period [start, end)."""
    return start < hour + HOUR and hour < end


def anomaly_hours(hour: datetime) -> list[datetime]:
    """The same hour on each of the 7 days before ``hour``, oldest first."""
    return [hour - timedelta(days=d) for d in range(ANOMALY_DAYS, 0, -1)]


def evaluates_anomaly(hour: datetime, now: datetime) -> bool:
    """Only the current and the previous hour are "the last hour"; older ones are history."""
    return hour >= hour_of(now) - HOUR


# --- thresholds ----------------------------------------------------------------------


def text_of(value: Decimal) -> str:
    """One spelling per number (80, 80.0 and 8E+1 are "80")."""
    return format(value.normalize(), "f") if value else "0"


def crossed(
    reached: Decimal,
    thresholds: Sequence[Decimal],
    every: Decimal | None,
    at_least: Callable[[Decimal], bool] | None = None,
) -> list[Decimal]:
    """The thresholds ``reached`` is at or above: each fixed one, and of the recurring ones
    (every ``every`` above the highest fixed threshold) only the highest, so a jump past
    many multiples raises one alert, not thousands.

    ``at_least(t)`` decides exactly when ``reached`` is itself a rounded quotient."""
    exact = at_least or (lambda t: reached >= t)
    out = [t for t in thresholds if exact(t)]
    if every is not None:
        base = thresholds[-1] if thresholds else Decimal(0)
        steps = int((reached - base) // every) if reached > base else 0
        if exact(base + (steps + 1) * every):
            steps += 1
        elif steps >= 1 and not exact(base + steps * every):
            steps -= 1
        if steps >= 1:
            out.append(base + steps * every)
    return out


def included_quantity(plan: PlanSpec, meter: str) -> Decimal | None:
    """The included quantity of the plan's price on ``meter`` (None: no such price)."""
    for price in plan.prices:
        if not isinstance(price, FlatPrice) and price.meter == meter:
            return price.included_quantity
    return None


def usage_href(meter: str, subject: str, start: datetime, end: datetime, window: str) -> str:
    query = urlencode(
        {
            "subject": subject,
            "from": start.isoformat().replace("+00:00", "Z"),
            "to": end.isoformat().replace("+00:00", "Z"),
            "window_size": window,
        }
    )
    return f"/v1/meters/{quote(meter)}/usage?{query}"


def _new(
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


def usage_alerts(
    rule: RuleDef,
    subject: str,
    period: tuple[datetime, datetime],
    total: Decimal | None,
    included: Decimal | None,
    now: datetime,
) -> list[Alert]:
    """The alerts a usage-threshold rule raises for ``subject`` at ``total`` (the meter's
    value over ``period``). Percent rules need the plan's ``included`` quantity (> 0)."""
    spec = spec_of(rule).rule
    assert isinstance(spec, UsageThreshold)
    if total is None:
        return []
    if spec.unit == "percent_of_included":
        if not included:
            return []
        reached = total * _PERCENT / included  # rounded: compared exactly, shown rounded down
        hits = crossed(
            reached,
            spec.thresholds,
            spec.recurring_every,
            lambda t: total * _PERCENT >= t * included,
        )
        shown = reached.quantize(Decimal("0.01"), ROUND_DOWN)
    else:
        hits = crossed(total, spec.thresholds, spec.recurring_every)
        shown = total
    about = About(
        type="meter_usage",
        id=spec.meter,
        href=usage_href(spec.meter, subject, period[0], period[1], "none"),
    )
    out = []
    for t in hits:
        if spec.unit == "percent_of_included":
            what = f"{text_of(shown)}% of the {text_of(included or Decimal(0))} included"
            message = (
                f"{spec.meter} usage of {subject} reached {text_of(t)}% of the plan's included "
                f"quantity: {text_of(total)} ({what})"
            )
        else:
            message = f"{spec.meter} usage of {subject} reached {text_of(t)}: {text_of(total)}"
        out.append(
            _new(
                rule,
                subject=subject,
                dedupe=f"usage:{subject}:{period[0].isoformat()}:{text_of(t)}",
                about=about,
                message=message + f" in the period from {utc_text(period[0])}",
                now=now,
                period=period,
                threshold=t,
                value=shown,
                unit=spec.unit,
            )
        )
    return out


def spend_alerts(
    rule: RuleDef,
    subject: str,
    period: tuple[datetime, datetime],
    amount: int,
    now: datetime,
) -> list[Alert]:
    """The alerts a spend rule raises at ``amount`` (the invoice-to-be, minor units)."""
    spec = spec_of(rule).rule
    assert isinstance(spec, SpendThreshold)
    hits = crossed(
        Decimal(amount),
        [Decimal(t) for t in spec.thresholds],
        Decimal(spec.recurring_every) if spec.recurring_every is not None else None,
    )
    about = About(
        type="customer",
        id=subject,
        href=f"/v1/customers/{quote(subject)}",
    )
    return [
        _new(
            rule,
            subject=subject,
            dedupe=f"spend:{subject}:{period[0].isoformat()}:{text_of(t)}",
            about=about,
            message=(
                f"the invoice-to-be of {subject} reached {money(int(t), spec.currency)}: "
                f"{money(amount, spec.currency)} for the period from "
                f"{utc_text(period[0])}"
            ),
            now=now,
            period=period,
            threshold=t,
            value=Decimal(amount),
            unit=spec.currency,
        )
        for t in hits
    ]


def money(minor: int, currency: str) -> str:
    places = exponent(currency)
    return f"{format(Decimal(minor).scaleb(-places), 'f')} {currency}"


def anomaly_alert(
    rule: RuleDef,
    subject: str,
    hour: datetime,
    value: Decimal | None,
    history: Sequence[Decimal | None],
    now: datetime,
) -> Alert | None:
    """An alert if ``value`` (the hour's usage) is above factor x the mean of ``history``
    (the same hour on the days before; None counts as 0). No history, no alert."""
    spec = spec_of(rule).rule
    assert isinstance(spec, Anomaly)
    past = [h or Decimal(0) for h in history]
    total = sum(past, Decimal(0))
    if value is None or total <= 0 or value < spec.min_value:
        return None
    if value * len(past) <= spec.factor * total:  # value > factor * mean, exactly
        return None
    mean = total / len(past)
    threshold = (spec.factor * mean).quantize(Decimal("0.000001"))
    start = hour - timedelta(days=ANOMALY_DAYS)
    return _new(
        rule,
        subject=subject,
        dedupe=f"anomaly:{subject}:{hour.isoformat()}",
        about=About(
            type="meter_usage",
            id=spec.meter,
            href=usage_href(spec.meter, subject, start, hour + HOUR, "hour"),
        ),
        message=(
            f"{spec.meter} usage of {subject} in the hour from {utc_text(hour)} is "
            f"{text_of(value)}, above {text_of(spec.factor)} x the mean of the same hour on the "
            f"{len(past)} days before ({text_of(mean.quantize(Decimal('0.000001')))})"
        ),
        now=now,
        period=(hour, hour + HOUR),
        threshold=threshold,
        value=value,
        unit="quantity",
    )


def operational_alert(
    rule: RuleDef,
    *,
    subject: str | None,
    dedupe: str,
    about: About,
    message: str,
    now: datetime,
    value: Decimal | None = None,
    unit: str | None = None,
) -> Alert:
    return _new(
        rule,
        subject=subject,
        dedupe=f"{rule.target}:{dedupe}",
        about=about,
        message=message,
        now=now,
        value=value,
        unit=unit,
    )


def with_ids(alerts: Sequence[Alert]) -> list[Alert]:
    """Unique by id, first wins (two touched hours of one period raise the same alert)."""
    seen: dict[str, Alert] = {}
    for a in alerts:
        seen.setdefault(a.id, a)
    return list(seen.values())


# --- events --------------------------------------------------------------------------


def alert_data(a: Alert) -> AlertData:
    return AlertData(
        alert_id=a.id,
        rule=a.rule_key,
        kind=a.kind,
        condition=a.condition,
        subject=a.subject,
        state=a.state,
        period_start=a.period_start,
        period_end=a.period_end,
        threshold=a.threshold,
        value=a.value,
        unit=a.unit,
        about=About(type=a.about_type, id=a.about_id, href=a.about_href),
        message=a.message,
        raised_at=a.raised_at,
        acknowledged_at=a.acknowledged_at,
        resolved_at=a.resolved_at,
        resolution=a.resolution,
    )


_EVENTS: dict[str, type[AlertRaised | AlertAcknowledged | AlertResolved]] = {
    "firing": AlertRaised,
    "acknowledged": AlertAcknowledged,
    "resolved": AlertResolved,
}


def event_for(a: Alert, cause: CloudEvent | None = None) -> CloudEvent:
    """The event of the state ``a`` just entered. Its id is derived from the alert and the
    state, so the same transition always has the same event id."""
    cls = _EVENTS[a.state]
    envelope: dict[str, Any] = cause.caused() if cause is not None else {"tenantid": a.tenant_id}
    return cls(
        **envelope,
        id=f"{a.id}.{cls.model_fields['type'].default}",
        source=SOURCE,
        subject=a.subject,
        data=alert_data(a),
    )


# --- operational ---------------------------------------------------------------------


def invoice_about(invoice_id: str) -> About:
    return About(type="invoice", id=invoice_id, href=f"/v1/invoices/{quote(invoice_id)}")


def _invoice_alert(
    rule: RuleDef,
    subject: str,
    invoice_id: str,
    dedupe: str,
    message: str,
    money_: tuple[int, str],
    now: datetime,
) -> Alert:
    """An operational alert about an invoice; its value is the amount at stake."""
    amount, currency = money_
    return operational_alert(
        rule,
        subject=subject,
        dedupe=dedupe,
        about=invoice_about(invoice_id),
        message=message,
        now=now,
        value=Decimal(amount),
        unit=currency,
    )


def payment_failed(rule: RuleDef, e: PaymentFailed, now: datetime) -> Alert:
    d = e.data
    why = d.failure_message or d.failure_code or "no reason given"
    retry = f"; retried at {utc_text(d.next_attempt_at)}" if d.next_attempt_at else ""
    message = (
        f"payment of {money(d.amount, d.currency)} by {d.customer} for invoice "
        f"{d.invoice_id} failed (attempt {d.attempt}): {why}{retry}"
    )
    return _invoice_alert(
        rule, d.customer, d.invoice_id, f"{d.invoice_id}:{d.attempt}", message,
        (d.amount, d.currency), now,
    )  # fmt: skip


def dunning_exhausted(rule: RuleDef, e: DunningExhausted, now: datetime) -> Alert:
    d = e.data
    message = (
        f"dunning exhausted for invoice {d.invoice_id} of {d.customer}: "
        f"{money(d.amount, d.currency)} unpaid after {d.attempts} attempts; the invoice "
        "is uncollectible"
    )
    return _invoice_alert(
        rule, d.customer, d.invoice_id, d.invoice_id, message, (d.amount, d.currency), now
    )


def invoice_overdue(rule: RuleDef, i: OverdueInvoice, now: datetime) -> Alert:
    message = (
        f"invoice {i.number or i.invoice_id} of {i.subject} is overdue: "
        f"{money(i.amount_due, i.currency)} was due {utc_text(i.due_at)}"
    )
    return _invoice_alert(
        rule, i.subject, i.invoice_id, i.invoice_id, message, (i.amount_due, i.currency), now
    )


def endpoint_about(endpoint_id: str) -> About:
    return About(
        type="webhook_endpoint",
        id=endpoint_id,
        href=f"/v1/webhooks/endpoints/{quote(endpoint_id)}",
    )


def endpoint_disabled(rule: RuleDef, e: EndpointDisabled, now: datetime) -> Alert:
    d = e.data
    since = f" (failing since {utc_text(d.failing_since)})" if d.failing_since else ""
    return operational_alert(
        rule,
        subject=None,
        dedupe=f"{d.endpoint_id}:{e.id}",
        about=endpoint_about(d.endpoint_id),
        message=f"webhook endpoint {d.endpoint_id} was disabled: {d.reason}{since}",
        now=now,
    )


def dead_letter(
    rule: RuleDef,
    *,
    topic: str,
    partition: int,
    offset: int,
    subject: str | None,
    origin: str,
    reason: str,
    now: datetime,
) -> Alert:
    ref = f"{partition}:{offset}"
    return operational_alert(
        rule,
        subject=subject,
        dedupe=f"{topic}:{ref}",
        about=About(
            type="dead_letter", id=f"{topic}/{ref}", href=f"billstream dlq show {topic} {ref}"
        ),
        message=f"a message from {origin} was dead-lettered to {topic} at {ref}: {reason}",
        now=now,
    )


def job_quarantined(rule: RuleDef, e: OpsQuarantined, now: datetime) -> Alert:
    """A job set one of the tenant's items aside (``ops.quarantined``): once per quarantine."""
    d = e.data
    return operational_alert(
        rule,
        subject=None,
        dedupe=d.quarantine_id,
        about=About(
            type="quarantine",
            id=d.quarantine_id,
            href=f"billstream quarantine show {d.quarantine_id}",
        ),
        message=(
            f"job {d.job} quarantined {d.kind} {d.item_id}: {d.reason}; it is not processed "
            "again until it is released"
        ),
        now=now,
    )

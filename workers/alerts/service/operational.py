"""Operational conditions: the alerts that payment, webhook-endpoint, quarantine,
dead-letter and overdue-invoice facts raise, and the facts that resolve them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from schemas.alerts import About
from schemas.envelope import CloudEvent
from schemas.ops import OpsQuarantined
from schemas.payments import DunningExhausted, PaymentFailed, PaymentSucceeded
from schemas.webhooks import EndpointDeleted, EndpointDisabled, EndpointEnabled
from workers.alerts.service.domain import Alert, OverdueInvoice, RuleDef, new_alert
from workers.alerts.service.text import money, utc_text


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
    return new_alert(
        rule,
        subject=subject,
        dedupe=f"{rule.target}:{dedupe}",
        about=about,
        message=message,
        now=now,
        value=value,
        unit=unit,
    )


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


def overdue_alerts(
    rules: Sequence[RuleDef], overdue: Sequence[OverdueInvoice], now: datetime
) -> list[Alert]:
    """The ``invoice_overdue`` alerts of these invoices, by their tenants' rules."""
    return [
        invoice_overdue(r, i, now) for i in overdue for r in rules if r.tenant_id == i.tenant_id
    ]


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


# --- which event raises or resolves which condition -----------------------------------

_RAISES: dict[type[CloudEvent], tuple[str, Callable[[RuleDef, Any, datetime], Alert]]] = {
    PaymentFailed: ("payment_failed", payment_failed),
    DunningExhausted: ("dunning_exhausted", dunning_exhausted),
    EndpointDisabled: ("webhook_endpoint_disabled", endpoint_disabled),
    OpsQuarantined: ("job_quarantined", job_quarantined),
}


def condition_raised_by(event: CloudEvent) -> str | None:
    """The operational condition ``event`` raises alerts of (None: it raises none)."""
    raises = _RAISES.get(type(event))
    return raises[0] if raises is not None else None


def raised_by(event: CloudEvent, rules: Sequence[RuleDef], now: datetime) -> list[Alert]:
    """The alerts of ``rules`` (on ``condition_raised_by(event)``) that ``event`` raises."""
    _, build = _RAISES[type(event)]
    return [build(r, event, now) for r in rules]


@dataclass(frozen=True)
class Resolution:
    """The open alerts of ``condition`` about ``about`` (tenant, type, id) resolve, ``why``."""

    about: tuple[str, str, str]
    condition: str
    why: str


def resolved_by(event: CloudEvent) -> Resolution | None:
    """What ``event`` resolves: a paid invoice its payment failures, an endpoint enabled
    again or deleted its ``webhook_endpoint_disabled`` alerts."""
    if isinstance(event, PaymentSucceeded):
        ref = (event.tenantid, "invoice", event.data.invoice_id)
        return Resolution(ref, "payment_failed", "payment succeeded")
    if isinstance(event, EndpointEnabled | EndpointDeleted):
        ref = (event.tenantid, "webhook_endpoint", event.data.endpoint_id)
        why = "endpoint enabled" if isinstance(event, EndpointEnabled) else "endpoint deleted"
        return Resolution(ref, "webhook_endpoint_disabled", why)
    return None

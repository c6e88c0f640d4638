"""Alerts domain logic. Pure: no I/O, no Kafka, no SQL; unit-tested directly.

- ``domain``: the types (rules, alerts, periods, overdue invoices) and an alert's identity
- ``rules``: a rule from its command, its definition, whom it applies to
- ``periods``: the time windows rules look at
- ``thresholds``: what usage, spend and anomaly rules raise
- ``credit``: what credit balance rules raise, once per crossing
- ``operational``: what operational facts raise and resolve
- ``events``: the event of each state an alert enters
- ``text``: how times, numbers and money are spelled in messages
"""

from __future__ import annotations

from workers.alerts.service.credit import (
    REARMED,
    credit_alert,
    credit_applies,
    credit_dedupe,
    credit_levels,
)
from workers.alerts.service.domain import (
    Alert,
    CreditLevel,
    OverdueInvoice,
    Period,
    RuleDef,
    new_alert,
    with_ids,
)
from workers.alerts.service.events import SOURCE, event_for
from workers.alerts.service.operational import (
    Resolution,
    condition_raised_by,
    dead_letter,
    dunning_exhausted,
    endpoint_about,
    endpoint_disabled,
    invoice_about,
    invoice_overdue,
    job_quarantined,
    operational_alert,
    overdue_alerts,
    payment_failed,
    raised_by,
    resolved_by,
)
from workers.alerts.service.periods import (
    ANOMALY_DAYS,
    HOUR,
    Clock,
    anomaly_hours,
    calendar_month,
    evaluates_anomaly,
    hour_of,
    in_period,
    utc_now,
)
from workers.alerts.service.rules import (
    CREDIT_KINDS,
    PERIOD_KINDS,
    applies,
    ensure_same_definition,
    new_rule,
)
from workers.alerts.service.text import money, text_of, utc_text
from workers.alerts.service.thresholds import (
    anomaly_alert,
    crossed,
    included_quantity,
    spend_alerts,
    usage_alerts,
    usage_href,
)
from workers.alerts.views import spec_of

__all__ = [
    "ANOMALY_DAYS",
    "CREDIT_KINDS",
    "HOUR",
    "PERIOD_KINDS",
    "REARMED",
    "SOURCE",
    "Alert",
    "Clock",
    "CreditLevel",
    "OverdueInvoice",
    "Period",
    "Resolution",
    "RuleDef",
    "anomaly_alert",
    "anomaly_hours",
    "applies",
    "calendar_month",
    "condition_raised_by",
    "credit_alert",
    "credit_applies",
    "credit_dedupe",
    "credit_levels",
    "crossed",
    "dead_letter",
    "dunning_exhausted",
    "endpoint_about",
    "endpoint_disabled",
    "ensure_same_definition",
    "evaluates_anomaly",
    "event_for",
    "hour_of",
    "in_period",
    "included_quantity",
    "invoice_about",
    "invoice_overdue",
    "job_quarantined",
    "money",
    "new_alert",
    "new_rule",
    "operational_alert",
    "overdue_alerts",
    "payment_failed",
    "raised_by",
    "resolved_by",
    "spec_of",
    "spend_alerts",
    "text_of",
    "usage_alerts",
    "usage_href",
    "utc_now",
    "utc_text",
    "with_ids",
]

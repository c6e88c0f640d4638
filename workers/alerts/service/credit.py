"""What a credit balance rule raises: a customer's projected credit balance (its grants'
balance minus the cost of what is not invoiced yet) falling below a threshold, once per
crossing. The state of each (rule, customer, threshold) is the repository's: this module
says which thresholds the balance is below and at or above, and builds the alert of a
crossing (unique by its number) and the resolution of its re-arming."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from urllib.parse import quote

from schemas.alerts import CREDIT_BALANCE_LOW, About, CreditBalanceLow
from workers.alerts.service.domain import Alert, CreditLevel, RuleDef, new_alert
from workers.alerts.service.text import money
from workers.alerts.views import spec_of

REARMED = "credit balance back at or above the threshold"


def credit_rule(rule: RuleDef) -> CreditBalanceLow:
    spec = spec_of(rule).rule
    assert isinstance(spec, CreditBalanceLow)
    return spec


def credit_applies(rule: RuleDef, subject: str, currency: str) -> bool:
    """The rule looks at this customer: its subject (or every customer), its currency."""
    return (rule.subject is None or rule.subject == subject) and credit_rule(
        rule
    ).currency == currency


def credit_levels(
    rule: RuleDef, subject: str, projected: int
) -> tuple[list[CreditLevel], list[CreditLevel]]:
    """The rule's thresholds for ``subject`` that ``projected`` is below (strictly: a
    balance exactly at a threshold has not fallen below it), and those it is at or above
    (which re-arms them)."""
    below: list[CreditLevel] = []
    above: list[CreditLevel] = []
    for t in credit_rule(rule).thresholds:
        level = CreditLevel(rule.tenant_id, rule.id, subject, t)
        (below if projected < t else above).append(level)
    return below, above


def credit_dedupe(level: CreditLevel) -> str:
    """The identity of one crossing: the n-th time the subject fell below the threshold."""
    return f"credit:{level.subject}:{level.threshold}:{level.crossings}"


def credit_alert(
    rule: RuleDef,
    level: CreditLevel,
    *,
    balance: int,
    pending: int,
    now: datetime,
) -> Alert:
    """The alert of a crossing: the projected balance (``balance - pending``) fell below
    ``level.threshold``. ``value`` is the projected balance, ``unit`` the currency."""
    currency = credit_rule(rule).currency
    subject = level.subject
    projected = balance - pending
    return new_alert(
        rule,
        subject=subject,
        dedupe=credit_dedupe(level),
        about=About(
            type="customer", id=subject, href=f"/v1/customers/{quote(subject, safe='')}/credits"
        ),
        message=(
            f"{CREDIT_BALANCE_LOW}: the projected credit balance of {subject} fell below "
            f"{money(level.threshold, currency)}: {money(projected, currency)} "
            f"(balance {money(balance, currency)}, not invoiced yet "
            f"{money(pending, currency)})"
        ),
        now=now,
        threshold=Decimal(level.threshold),
        value=Decimal(projected),
        unit=currency,
    )

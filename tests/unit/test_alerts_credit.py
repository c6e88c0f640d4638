"""Credit balance rules (``credit_balance_low``): the rule's definition, which thresholds a
projected balance is below (strictly) and at or above, and the alert of one crossing: its
identity per crossing, the ``credit.balance_low`` condition users see, money in currencies
of exponent 0, 2 and 3."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.alerts import AlertRaised, CreateAlertRule, RuleSpec
from workers.alerts import service
from workers.alerts.service import CreditLevel, RuleDef

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


def credit_rule(key: str = "low", tenant: str = "acme", **kw: Any) -> RuleDef:
    spec = {"kind": "credit_balance_low", "currency": "USD", "thresholds": [1000, 0], **kw}
    command = CreateAlertRule(
        source="tests",
        tenantid=tenant,
        data=RuleSpec.model_validate({"key": key, "rule": spec}),
    )
    return service.new_rule(command)


def test_the_rule_names_its_condition_and_keeps_thresholds_sorted() -> None:
    r = credit_rule(subject="cust-1")
    assert (r.kind, r.target, r.subject) == ("credit_balance_low", "credit.balance_low", "cust-1")
    assert r.spec["rule"]["thresholds"] == [0, 1000]


@pytest.mark.parametrize(
    ("thresholds", "field"),
    [
        ([], "thresholds"),  # something to cross
        ([-1], "thresholds.0"),  # non-negative
        ([500, 500], "thresholds"),  # distinct
        ([10**15 + 1], "thresholds.0"),  # fits the money bounds
        (["5.5"], "thresholds.0"),  # integer minor units, never a fraction
    ],
)
def test_invalid_thresholds_are_refused(thresholds: list[Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        credit_rule(thresholds=thresholds)
    assert any(
        ".".join(map(str, err["loc"])).endswith(f"credit_balance_low.{field}")
        for err in e.value.errors()
    ), e.value.errors()


@pytest.mark.parametrize(
    ("projected", "below", "above"),
    [
        (1500, [], [0, 1000]),
        (1000, [], [0, 1000]),  # exactly at a threshold has not fallen below it
        (999, [1000], [0]),
        (0, [1000], [0]),
        (-1, [0, 1000], []),  # overdrawn: below 0 too
    ],
)
def test_levels_below_strictly_and_at_or_above(
    projected: int, below: list[int], above: list[int]
) -> None:
    r = credit_rule()
    lo, hi = service.credit_levels(r, "cust-1", projected)
    assert [lv.threshold for lv in lo] == below
    assert [lv.threshold for lv in hi] == above
    assert all((lv.tenant_id, lv.rule_id, lv.subject) == ("acme", r.id, "cust-1") for lv in lo + hi)


def test_a_rule_applies_to_its_subject_in_its_currency() -> None:
    every, one = credit_rule(), credit_rule(subject="cust-1")
    assert service.credit_applies(every, "anyone", "USD")
    assert not service.credit_applies(every, "anyone", "EUR")
    assert service.credit_applies(one, "cust-1", "USD")
    assert not service.credit_applies(one, "cust-2", "USD")


def test_each_crossing_is_one_alert_of_its_own() -> None:
    r = credit_rule()
    first = CreditLevel("acme", r.id, "cust-1", 1000, crossings=1)
    a = service.credit_alert(r, first, balance=5000, pending=4200, now=NOW)
    again = service.credit_alert(r, first, balance=5000, pending=4900, now=NOW)
    second = service.credit_alert(
        r, CreditLevel("acme", r.id, "cust-1", 1000, crossings=2), balance=0, pending=1, now=NOW
    )
    other = service.credit_alert(
        r, CreditLevel("acme", r.id, "cust-2", 1000, crossings=1), balance=0, pending=1, now=NOW
    )
    assert a.id == again.id  # the same crossing seen twice is one alert
    assert len({a.id, second.id, other.id}) == 3
    assert (a.kind, a.condition, a.subject, a.state) == (
        "credit_balance_low", "credit.balance_low", "cust-1", "firing",
    )  # fmt: skip
    assert (a.threshold, a.value, a.unit) == (Decimal(1000), Decimal(800), "USD")
    assert (a.period_start, a.period_end) == (None, None)  # never resolved by a period end
    assert (a.about_type, a.about_id, a.about_href) == (
        "customer", "cust-1", "/v1/customers/cust-1/credits",
    )  # fmt: skip
    assert a.message == (
        "credit.balance_low: the projected credit balance of cust-1 fell below 10.00 USD: "
        "8.00 USD (balance 50.00 USD, not invoiced yet 42.00 USD)"
    )
    event = service.event_for(a)
    assert isinstance(event, AlertRaised)
    assert event.data.kind == "credit_balance_low"
    assert event.data.condition == "credit.balance_low"


@pytest.mark.parametrize(
    ("currency", "threshold", "balance", "pending", "text"),
    [
        # exponent 0: 5,000 JPY, balance 12,000 - pending 8,000 = 4,000
        ("JPY", 5000, 12000, 8000, "fell below 5000 JPY: 4000 JPY (balance 12000 JPY"),
        # exponent 2: 25.00 EUR, 30.00 - 5.01 = 24.99
        ("EUR", 2500, 3000, 501, "fell below 25.00 EUR: 24.99 EUR (balance 30.00 EUR"),
        # exponent 3: 1.000 KWD, 0.500 - 0.750 = -0.250 (overdrawn)
        ("KWD", 1000, 500, 750, "fell below 1.000 KWD: -0.250 KWD (balance 0.500 KWD"),
    ],
)
def test_money_in_the_message_by_currency_exponent(
    currency: str, threshold: int, balance: int, pending: int, text: str
) -> None:
    r = credit_rule(currency=currency, thresholds=[threshold])
    [level], _ = service.credit_levels(r, "c", balance - pending)
    assert level.threshold == threshold
    a = service.credit_alert(
        r, replace(level, crossings=1), balance=balance, pending=pending, now=NOW
    )
    assert text in a.message
    assert a.value == Decimal(balance - pending) and a.unit == currency

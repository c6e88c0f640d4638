"""The alerts service: which thresholds a value crosses, the alerts a rule raises, their
identity (what makes "exactly once" possible), anomalies, and the events."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.alerts import AlertRaised, CreateAlertRule, RuleSpec
from workers.alerts import service
from workers.alerts.service import RuleDef

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
PERIOD = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def rule(kind_spec: dict[str, Any], key: str = "r1", tenant: str = "acme") -> RuleDef:
    command = CreateAlertRule(
        source="tests",
        tenantid=tenant,
        data=RuleSpec.model_validate({"key": key, "rule": kind_spec}),
    )
    return service.new_rule(command)


def usage_rule(**kw: Any) -> RuleDef:
    return rule({"kind": "usage_threshold", "meter": "tokens", **kw})


D = Decimal


@pytest.mark.parametrize(
    ("value", "thresholds", "every", "expected"),
    [
        (D("79.99"), [D(80), D(100)], None, []),
        (D(80), [D(80), D(100)], None, [D(80)]),  # exactly at the threshold crosses it
        (D(100), [D(80), D(100)], None, [D(80), D(100)]),
        (D(250), [D(100)], D(50), [D(100), D(250)]),  # recurring: the highest step only
        (D(149), [D(100)], D(50), [D(100)]),
        (D(10_000_000), [], D(1), [D(10_000_000)]),  # a jump raises one, not millions
        (D(0), [], D(5), []),
    ],
)
def test_crossed(
    value: Decimal, thresholds: list[Decimal], every: Decimal | None, expected: list[Decimal]
) -> None:
    assert service.crossed(value, thresholds, every) == expected


def test_usage_alerts_in_quantity_carry_the_value_threshold_and_a_usage_link() -> None:
    r = usage_rule(thresholds=["80", "100"])
    [a] = service.usage_alerts(r, "cust-1", PERIOD, D(80), None, NOW)
    assert (a.threshold, a.value, a.unit, a.state) == (D(80), D(80), "quantity", "firing")
    assert (a.period_start, a.period_end, a.subject) == (*PERIOD, "cust-1")
    assert a.about_type == "meter_usage" and a.about_id == "tokens"
    assert a.about_href == (
        "/v1/meters/tokens/usage?subject=cust-1&from=2026-11-01T00%3A00%3A00Z"
        "&to=2026-12-01T00%3A00%3A00Z&window_size=none"
    )
    assert "reached 80: 80" in a.message
    assert service.usage_alerts(r, "cust-1", PERIOD, None, None, NOW) == []


def test_percent_of_included_is_compared_exactly() -> None:
    r = usage_rule(unit="percent_of_included", thresholds=["80", "100"])
    # 80 % of 1,000 is exactly 800
    assert service.usage_alerts(r, "c", PERIOD, D("799.999"), D(1000), NOW) == []
    [a80] = service.usage_alerts(r, "c", PERIOD, D(800), D(1000), NOW)
    assert (a80.threshold, a80.value, a80.unit) == (D(80), D("80.00"), "percent_of_included")
    # one third included: 80 % of 1/3 is not a finite decimal; no rounding decides it
    third = D(1) / D(3)
    assert service.usage_alerts(r, "c", PERIOD, third * D("0.79"), third, NOW) == []
    assert len(service.usage_alerts(r, "c", PERIOD, third, third, NOW)) == 2
    recurring = usage_rule(unit="percent_of_included", recurring_every="50")
    # 150 % of 1/3, exactly: the rounded quotient may land a hair below 150
    [a150] = service.usage_alerts(recurring, "c", PERIOD, third * D("1.5"), third, NOW)
    assert a150.threshold == D(150)
    # no plan price on the meter, or nothing included: a percent rule cannot say anything
    assert service.usage_alerts(r, "c", PERIOD, D(10**9), None, NOW) == []
    assert service.usage_alerts(r, "c", PERIOD, D(10**9), D(0), NOW) == []


def test_alert_identity_is_per_rule_subject_period_and_threshold() -> None:
    r = usage_rule(thresholds=["80", "100"])
    first = service.usage_alerts(r, "c", PERIOD, D(100), None, NOW)
    later = service.usage_alerts(r, "c", PERIOD, D(5000), None, NOW + timedelta(hours=3))
    assert [a.id for a in first] == [a.id for a in later]  # same alerts: inserted once
    assert len({a.id for a in first}) == 2
    next_period = (PERIOD[1], datetime(2027, 1, 1, tzinfo=UTC))
    assert {a.id for a in service.usage_alerts(r, "c", next_period, D(100), None, NOW)}.isdisjoint(
        a.id for a in first
    )
    other_subject = service.usage_alerts(r, "d", PERIOD, D(100), None, NOW)
    assert {a.id for a in other_subject}.isdisjoint(a.id for a in first)
    same_key_new_rule = usage_rule(thresholds=["80", "100"])  # deleted and re-created
    assert same_key_new_rule.id != r.id
    again = service.usage_alerts(same_key_new_rule, "c", PERIOD, D(100), None, NOW)
    assert {a.id for a in again}.isdisjoint(a.id for a in first)


def test_spend_alerts_in_minor_units_of_the_rule_currency() -> None:
    r = rule({"kind": "spend_threshold", "currency": "JPY", "thresholds": [5000]})
    [a] = service.spend_alerts(r, "c", PERIOD, 5000, NOW)
    assert (a.threshold, a.value, a.unit, a.about_type) == (D(5000), D(5000), "JPY", "customer")
    assert "5000 JPY" in a.message
    usd = rule({"kind": "spend_threshold", "currency": "USD", "thresholds": [10_000]})
    [b] = service.spend_alerts(usd, "c", PERIOD, 12_345, NOW)
    assert "100.00 USD" in b.message and "123.45 USD" in b.message
    assert service.spend_alerts(usd, "c", PERIOD, 9_999, NOW) == []


def test_anomaly_on_a_synthetic_week() -> None:
    r = rule({"kind": "anomaly", "meter": "tokens", "factor": "3"})
    hour = datetime(2026, 11, 20, 15, tzinfo=UTC)
    week = [D(10), D(12), D(8), D(10), None, D(15), D(15)]  # mean 10 (None: no usage = 0)
    assert service.anomaly_alert(r, "c", hour, D(30), week, NOW) is None  # not above 3 x 10
    a = service.anomaly_alert(r, "c", hour, D("30.01"), week, NOW)
    assert a is not None
    assert (a.threshold, a.value, a.period_start, a.period_end) == (
        D("30.000000"),
        D("30.01"),
        hour,
        hour + timedelta(hours=1),
    )
    assert "window_size=hour" in a.about_href
    # no history at all: no baseline, no alert
    assert service.anomaly_alert(r, "c", hour, D(1000), [None] * 7, NOW) is None
    quiet = rule({"kind": "anomaly", "meter": "tokens", "factor": "2", "min_value": "100"})
    assert service.anomaly_alert(quiet, "c", hour, D(99), [D(1)] * 7, NOW) is None
    assert service.anomaly_alert(quiet, "c", hour, D(100), [D(1)] * 7, NOW) is not None


def test_the_same_hour_on_the_seven_days_before_and_which_hours_are_recent() -> None:
    hour = datetime(2026, 11, 20, 15, tzinfo=UTC)
    hours = service.anomaly_hours(hour)
    assert hours[0] == hour - timedelta(days=7) and hours[-1] == hour - timedelta(days=1)
    assert all(h.hour == 15 for h in hours)
    assert service.evaluates_anomaly(datetime(2026, 11, 20, 14, tzinfo=UTC), NOW)
    assert not service.evaluates_anomaly(datetime(2026, 11, 20, 13, tzinfo=UTC), NOW)


def test_calendar_month_wraps_the_year() -> None:
    assert service.calendar_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_rule_conflicts_and_definitions() -> None:
    r = usage_rule(thresholds=["80"])
    service.ensure_same_definition(r, usage_rule(thresholds=["80.0"]))  # same numbers
    with pytest.raises(Exception, match="different definition"):
        service.ensure_same_definition(r, usage_rule(thresholds=["90"]))
    assert (r.kind, r.target, r.subject) == ("usage_threshold", "tokens", None)
    op = rule({"kind": "operational", "condition": "dead_letter"})
    assert (op.kind, op.target) == ("operational", "dead_letter")


def test_events_have_ids_derived_from_the_alert_and_its_state() -> None:
    [a] = service.usage_alerts(usage_rule(thresholds=["5"]), "c", PERIOD, D(7), None, NOW)
    raised = service.event_for(a)
    assert isinstance(raised, AlertRaised)
    assert raised.id == f"{a.id}.alert.raised" and raised.id == service.event_for(a).id
    body = json.loads(raised.to_json())
    assert body["data"]["value"] == "7" and body["data"]["threshold"] == "5"
    assert body["data"]["about"]["href"].startswith("/v1/meters/tokens/usage?")
    assert body["subject"] == "c" and body["tenantid"] == "acme"
    resolved = service.event_for(replace(a, state="resolved", resolved_at=NOW))
    assert resolved.type == "alert.resolved" and resolved.id != raised.id


def test_rule_validation_names_what_is_wrong() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give thresholds, recurring_every, or both"):
        RuleSpec.model_validate({"key": "x", "rule": {"kind": "usage_threshold", "meter": "t"}})
    with pytest.raises(ValidationError, match="thresholds must be distinct"):
        RuleSpec.model_validate(
            {
                "key": "x",
                "rule": {"kind": "spend_threshold", "currency": "EUR", "thresholds": [1, 1]},
            }
        )
    with pytest.raises(ValidationError, match="factor must be at least 1"):
        RuleSpec.model_validate(
            {"key": "x", "rule": {"kind": "anomaly", "meter": "t", "factor": "0.5"}}
        )

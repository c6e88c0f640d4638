"""Rows → contracts: a stored rule's definition and its API view, an alert as its events
and the API carry it. What the ingress and other contexts use of alerts (through the face).

Imports nothing of the service at run time (the service builds its events from these)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from schemas.alerts import About, AlertData, RuleCondition, RuleSpec

if TYPE_CHECKING:
    from workers.alerts.service.domain import Alert, RuleDef

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


class AlertRuleView(BaseModel):
    key: str
    name: str | None
    rule: RuleCondition = Field(description="The rule's condition, as it was defined.")
    created_at: datetime | None


def rule_view(r: RuleDef) -> AlertRuleView:
    return AlertRuleView(key=r.key, name=r.name, rule=spec_of(r).rule, created_at=r.created_at)


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

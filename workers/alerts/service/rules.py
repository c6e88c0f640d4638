"""Alert rules: a rule from its command, the same definition again, whom it applies to."""

from __future__ import annotations

from schemas.alerts import CREDIT_BALANCE_LOW, CreateAlertRule
from schemas.envelope import new_id
from workers.alerts.errors import RuleConflict
from workers.alerts.service.domain import RuleDef
from workers.alerts.views import spec_of  # a stored rule's definition is a view of it

# the kinds of rule evaluated against usage totals (per billing period or hour)
PERIOD_KINDS = ("usage_threshold", "spend_threshold", "anomaly")
# the kinds of rule evaluated against customers' credit balances
CREDIT_KINDS = ("credit_balance_low",)


def new_rule(command: CreateAlertRule) -> RuleDef:
    spec = command.data
    rule = spec.rule
    target: str
    if rule.kind == "operational":
        target = rule.condition
    elif rule.kind == "spend_threshold":
        target = rule.currency
    elif rule.kind == "credit_balance_low":
        target = CREDIT_BALANCE_LOW  # what its alerts name as their condition
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


def applies(rule: RuleDef, subject: str | None) -> bool:
    return rule.subject is None or rule.subject == subject

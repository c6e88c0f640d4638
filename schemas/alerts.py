"""Alert commands (``billstream.commands.alerts.v1``) and events
(``billstream.events.alerts.v1``).

A rule belongs to a tenant and says when to raise an alert: a usage or spend threshold
crossed in the current period, a customer's projected credit balance falling below a
threshold, an hour of anomalous usage, or an operational failure. An alert is raised at
most once per (rule, subject, period, threshold) — a credit balance alert once per
crossing — and lives ``firing -> acknowledged -> resolved``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import (
    MAX_MINOR_UNITS,
    Currency,
    Line,
    PositiveMinorUnits,
    ShowBounds,
    Text,
    check_minor_units,
    nonempty,
    present,
    show_model_bounds,
)
from schemas.decimals import DecimalStr
from schemas.envelope import CloudEvent
from schemas.metering import METER_KEY_PATTERN
from schemas.pricing import NonNegDecimal

RULE_KEY_PATTERN = METER_KEY_PATTERN  # slugs, like meter and plan keys
ALERT_ID_PATTERN = r"^al_[0-9a-f]{32}$"
MAX_THRESHOLDS = 20

MeterKey = Annotated[str, Field(pattern=METER_KEY_PATTERN, description="A meter's key.")]
Subject = Annotated[
    Line | None,
    Field(
        default=None,
        min_length=1,
        max_length=256,
        description="One subject (a customer's external id); absent: every subject.",
    ),
]
AlertId = Annotated[str, Field(pattern=ALERT_ID_PATTERN)]

# OpenAPI only (the published schemas keep what they said): what the validators below
# refuse, where JSON Schema can say it. A decimal is a string or an integer (NonNegDecimal).
PositiveDecimal = Annotated[
    NonNegDecimal,
    ShowBounds({"exclusiveMinimum": 0, "not": {"type": "string", "pattern": "^0+(\\.0+)?$"}}),
]
AtLeastOne = Annotated[
    NonNegDecimal,
    ShowBounds({"minimum": 1, "not": {"type": "string", "pattern": "^0+(\\.[0-9]+)?$"}}),
]
_DISTINCT = ShowBounds({"uniqueItems": True})
NonNegMinorUnits = Annotated[
    int,
    Field(ge=0),  # before the validator, so the JSON Schema still shows it
    AfterValidator(check_minor_units),
    ShowBounds({"maximum": MAX_MINOR_UNITS}),
]
CREDIT_BALANCE_LOW = "credit.balance_low"  # the condition its alerts name
# a rule needs something to cross
_THRESHOLDS_OR_RECURRING = {"anyOf": [nonempty("thresholds"), present("recurring_every")]}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _ascending_unique(values: list[Decimal]) -> list[Decimal]:
    if any(v <= 0 for v in values):
        raise ValueError("thresholds must be greater than 0")
    if len(set(values)) != len(values):
        raise ValueError("thresholds must be distinct")
    return sorted(values)


class UsageThreshold(_Model):
    """The subject's value of ``meter`` over its current billing period (the subscription's
    period; the UTC calendar month for subjects without one) reaching a threshold."""

    kind: Literal["usage_threshold"] = "usage_threshold"
    meter: MeterKey
    subject: Subject = None
    unit: Literal["quantity", "percent_of_included"] = Field(
        default="quantity",
        description="quantity: thresholds in the meter's units; percent_of_included: in "
        "percent of the included quantity of the subject's plan price on this meter.",
    )
    thresholds: Annotated[list[PositiveDecimal], _DISTINCT] = Field(
        default_factory=list, max_length=MAX_THRESHOLDS
    )
    recurring_every: PositiveDecimal | None = Field(
        default=None,
        description="Also alert at every multiple of this (in the rule's unit) above the "
        "highest threshold.",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[Decimal]) -> list[Decimal]:
        return _ascending_unique(v)

    @field_validator("recurring_every")
    @classmethod
    def _positive(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v <= 0:
            raise ValueError("must be greater than 0")
        return v

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        keywords = _THRESHOLDS_OR_RECURRING
        return show_model_bounds(cls is UsageThreshold, core_schema, handler, keywords)

    @model_validator(mode="after")
    def _something_to_cross(self) -> UsageThreshold:
        if not self.thresholds and self.recurring_every is None:
            raise ValueError("give thresholds, recurring_every, or both")
        return self


class SpendThreshold(_Model):
    """The running total of the subject's invoice-to-be for its current billing period
    (flat fees, metered prices, minimums and tax, as invoicing would compute it now)
    reaching an amount, in minor units of ``currency``."""

    kind: Literal["spend_threshold"] = "spend_threshold"
    currency: Currency
    subject: Subject = None
    thresholds: Annotated[list[PositiveMinorUnits], _DISTINCT] = Field(
        default_factory=list, max_length=MAX_THRESHOLDS
    )
    recurring_every: PositiveMinorUnits | None = None

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("thresholds must be distinct")
        return sorted(v)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        keywords = _THRESHOLDS_OR_RECURRING
        return show_model_bounds(cls is SpendThreshold, core_schema, handler, keywords)

    @model_validator(mode="after")
    def _something_to_cross(self) -> SpendThreshold:
        if not self.thresholds and self.recurring_every is None:
            raise ValueError("give thresholds, recurring_every, or both")
        return self


class CreditBalanceLow(_Model):
    """A customer's projected credit balance (its grants' balance minus the cost of what is
    not invoiced yet) falling below a threshold, in minor units of ``currency``: raised once
    per crossing, re-armed when the projected balance is at or above the threshold again.
    Only customers with credit grants, in ``currency``, are evaluated. Its alerts name the
    condition ``credit.balance_low``."""

    kind: Literal["credit_balance_low"] = "credit_balance_low"
    currency: Currency
    subject: Subject = None
    thresholds: Annotated[list[NonNegMinorUnits], _DISTINCT] = Field(
        min_length=1,
        max_length=MAX_THRESHOLDS,
        description="Alert when the projected balance falls below each (minor units).",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("thresholds must be distinct")
        return sorted(v)


class Anomaly(_Model):
    """An hour's usage above ``factor`` times the mean of the same hour on the 7 days
    before (hours without usage count as 0; no alert without any usage in those days)."""

    kind: Literal["anomaly"] = "anomaly"
    meter: MeterKey
    subject: Subject = None
    factor: AtLeastOne = Field(default=Decimal(3), description="k in: value > k * mean.")
    min_value: NonNegDecimal = Field(
        default=Decimal(0), description="Hours with a value below this never alert."
    )

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: Decimal) -> Decimal:
        if v < 1:
            raise ValueError("factor must be at least 1")
        return v


Condition = Literal[
    "payment_failed",
    "dunning_exhausted",
    "invoice_overdue",
    "webhook_endpoint_disabled",
    "dead_letter",
    "job_quarantined",
]


class Operational(_Model):
    """An operational failure: a failed payment attempt, dunning exhausted, an invoice past
    its due date and unpaid, a webhook endpoint disabled, a message in a dead-letter topic,
    an item a job quarantined."""

    kind: Literal["operational"] = "operational"
    condition: Condition


RuleCondition = Annotated[
    UsageThreshold | SpendThreshold | CreditBalanceLow | Anomaly | Operational,
    Field(discriminator="kind"),
    ShowBounds({"required": ["kind"]}),  # the tag picks the variant: it must be given
]


class RuleSpec(_Model):
    """An alert rule as a tenant defines it (``POST /v1/alert-rules``)."""

    key: str = Field(pattern=RULE_KEY_PATTERN, description="Unique per tenant, e.g. 'tokens-80'.")
    name: Line | None = Field(default=None, max_length=256)
    rule: RuleCondition


# --- commands --------------------------------------------------------------------


class RuleRef(_Model):
    key: str = Field(pattern=RULE_KEY_PATTERN)


class AlertRef(_Model):
    alert_id: AlertId
    note: Text | None = Field(default=None, max_length=1024)


class CreateAlertRule(CloudEvent):
    """Define a rule. Re-sending the identical definition succeeds; a different one fails."""

    type: Literal["CreateAlertRule"] = "CreateAlertRule"
    data: RuleSpec


class DeleteAlertRule(CloudEvent):
    """Delete a rule; its open alerts are resolved."""

    type: Literal["DeleteAlertRule"] = "DeleteAlertRule"
    data: RuleRef


class AcknowledgeAlert(CloudEvent):
    """Someone is on it: firing -> acknowledged (already acknowledged: no change)."""

    type: Literal["AcknowledgeAlert"] = "AcknowledgeAlert"
    data: AlertRef


class ResolveAlert(CloudEvent):
    """Close an alert by hand (e.g. a dead letter that was dealt with)."""

    type: Literal["ResolveAlert"] = "ResolveAlert"
    data: AlertRef


AlertsCommand = Annotated[
    CreateAlertRule | DeleteAlertRule | AcknowledgeAlert | ResolveAlert,
    Field(discriminator="type"),
]

# --- events ----------------------------------------------------------------------

AlertState = Literal["firing", "acknowledged", "resolved"]
AlertKind = Literal[
    "usage_threshold", "spend_threshold", "credit_balance_low", "anomaly", "operational"
]


class About(_Model):
    """What an alert is about, with where to look."""

    type: Literal[
        "meter_usage", "customer", "invoice", "webhook_endpoint", "dead_letter", "quarantine"
    ]
    id: str = Field(
        description="Meter key, customer, invoice id, endpoint id, topic/partition:offset, "
        "or quarantine id."
    )
    href: str = Field(description="The API path (or CLI command) that shows it.")


class AlertData(_Model):
    alert_id: AlertId
    rule: str = Field(description="The rule's key.")
    kind: AlertKind
    condition: str = Field(
        description="The meter key, the operational condition, the currency (spend), or "
        "'credit.balance_low'."
    )
    subject: str | None = None
    state: AlertState
    period_start: AwareDatetime | None = None
    period_end: AwareDatetime | None = None
    threshold: DecimalStr | None = Field(default=None, description="What was crossed, in ``unit``.")
    value: DecimalStr | None = Field(default=None, description="The value that crossed it.")
    unit: str | None = Field(
        default=None, description="'quantity', 'percent_of_included', a currency (minor units)."
    )
    about: About
    message: str = Field(description="One line for humans.")
    raised_at: AwareDatetime
    acknowledged_at: AwareDatetime | None = None
    resolved_at: AwareDatetime | None = None
    resolution: str | None = Field(default=None, description="Why it was resolved.")


class AlertRaised(CloudEvent):
    type: Literal["alert.raised"] = "alert.raised"
    data: AlertData


class AlertAcknowledged(CloudEvent):
    type: Literal["alert.acknowledged"] = "alert.acknowledged"
    data: AlertData


class AlertResolved(CloudEvent):
    type: Literal["alert.resolved"] = "alert.resolved"
    data: AlertData


AlertsEvent = Annotated[
    AlertRaised | AlertAcknowledged | AlertResolved, Field(discriminator="type")
]

COMMANDS: tuple[type[CloudEvent], ...] = (
    CreateAlertRule,
    DeleteAlertRule,
    AcknowledgeAlert,
    ResolveAlert,
)
EVENTS: tuple[type[CloudEvent], ...] = (AlertRaised, AlertAcknowledged, AlertResolved)

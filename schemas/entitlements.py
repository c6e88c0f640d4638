"""Entitlements commands (``billstream.commands.entitlements.v1``), events
(``billstream.events.entitlements.v1``) and the answer of a check (docs/entitlements.md).

A *feature* is something a tenant's product gates: ``boolean`` (access or not), ``config``
(access plus a JSON object: a rate-limit tier, a seat count) or ``metered`` (access up to a
limit on one meter per billing period: ``soft`` only reports the crossing, ``hard`` denies
once usage reaches the limit). Features are attached to plans (``SetPlanEntitlements``),
overridden per customer (``SetEntitlementOverride``) and granted one-off
(``GrantEntitlement``: access and/or extra units for a while).

Access also follows money: a failed payment starts a grace period (access kept, status
``past_due``); when it ends unpaid the customer's access is denied as ``payment_pending``;
when dunning is exhausted, ``suspended``; paying (or voiding) the invoice restores it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from schemas.bounds import EXTERNAL_ID_PATTERN, ID_PATTERN, EventTime, Line, Text
from schemas.decimals import DecimalStr
from schemas.envelope import CloudEvent
from schemas.metering import METER_KEY_PATTERN
from schemas.pricing import KEY_PATTERN as PLAN_KEY_PATTERN
from schemas.pricing import Quantity

FEATURE_KEY_PATTERN = r"^[a-z0-9][a-z0-9_\-.]{0,63}$"
KEY_ID_PATTERN = r"^[A-Za-z0-9_\-]{43}$"  # an RFC 7638 JWK thumbprint (SHA-256, base64url)
MAX_FEATURES = 1_000  # per tenant: a check lists them all
MAX_PLAN_ENTITLEMENTS = 100  # per plan
MAX_GRANTS = 1_000  # per customer, in force or to come: every check reads them
MAX_CONFIG_BYTES = 4_096  # a configuration's compact JSON
MAX_CONFIG_DEPTH = 8

FeatureKind = Literal["boolean", "config", "metered"]
LimitMode = Literal["soft", "hard"]
Reason = Literal["not_subscribed", "limit_reached", "payment_pending", "suspended"]
Standing = Literal["active", "past_due", "payment_pending", "suspended"]
Source = Literal["plan", "override", "grant"]


def _depth(value: Any, at: int = 1) -> int:
    if isinstance(value, dict):
        return max([at, *(_depth(v, at + 1) for v in value.values())])
    if isinstance(value, list):
        return max([at, *(_depth(v, at + 1) for v in value)])
    return at


def _plain(value: Any) -> bool:
    """No NaN/Infinity, integers exact in every JSON client, no NUL (PostgreSQL's jsonb
    cannot store it)."""
    if isinstance(value, dict):
        return all("\x00" not in k and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) <= 2**53
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value
    return False


def check_config(value: dict[str, Any]) -> dict[str, Any]:
    if not _plain(value):
        raise ValueError(
            "must be plain JSON: integers within ±2**53, finite numbers, no NUL character"
        )
    if _depth(value) > MAX_CONFIG_DEPTH:
        raise ValueError(f"at most {MAX_CONFIG_DEPTH} levels of nesting")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"at most {MAX_CONFIG_BYTES} bytes as compact JSON (it is {size})")
    return value


Config = Annotated[dict[str, Any], AfterValidator(check_config)]
"""A feature's configuration: a JSON object of at most 4,096 bytes, 8 levels deep."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- commands -------------------------------------------------------------------------------


class FeatureSpec(_Model):
    key: str = Field(pattern=FEATURE_KEY_PATTERN, description="Unique per tenant, e.g. 'sso'.")
    name: Line = Field(min_length=1, max_length=256)
    kind: FeatureKind = Field(
        description="boolean: access or not; config: access with a JSON configuration; "
        "metered: access up to a limit on a meter per billing period"
    )
    meter: str | None = Field(
        default=None,
        pattern=METER_KEY_PATTERN,
        description="The meter a metered feature counts (its key); only for kind 'metered'",
    )
    description: Text | None = Field(default=None, max_length=2048)

    @model_validator(mode="after")
    def _meter_iff_metered(self) -> FeatureSpec:
        if self.kind == "metered" and self.meter is None:
            raise ValueError("a metered feature names its 'meter'")
        if self.kind != "metered" and self.meter is not None:
            raise ValueError(f"'meter' is only for metered features, not {self.kind!r}")
        return self


class CreateFeature(CloudEvent):
    """Define a feature. The same key again with the same kind and meter updates its name
    and description; with another kind or meter the command fails and nothing changes."""

    type: Literal["CreateFeature"] = "CreateFeature"
    data: FeatureSpec


class Grant(_Model):
    """What a plan or an override gives of one feature. Which fields apply depends on the
    feature's kind: ``config`` for config features, ``limit``/``limit_mode`` for metered
    ones (the worker refuses the others)."""

    feature: str = Field(pattern=FEATURE_KEY_PATTERN)
    config: Config | None = Field(default=None, description="For a config feature")
    limit: Quantity | None = Field(
        default=None,
        description="For a metered feature: the usage allowed per billing period (none: unlimited)",
    )
    limit_mode: LimitMode = Field(
        default="hard", description="hard: denied once usage reaches the limit; soft: reported"
    )


class PlanEntitlementsSpec(_Model):
    plan: str = Field(pattern=PLAN_KEY_PATTERN, description="The plan's key")
    entitlements: list[Grant] = Field(
        max_length=MAX_PLAN_ENTITLEMENTS,
        description="Every feature of the plan (replaces the list it had)",
    )

    @model_validator(mode="after")
    def _once_each(self) -> PlanEntitlementsSpec:
        seen: set[str] = set()
        for i, g in enumerate(self.entitlements):
            if g.feature in seen:
                raise ValueError(f"feature {g.feature!r} is listed twice (entitlements[{i}])")
            seen.add(g.feature)
        return self


class SetPlanEntitlements(CloudEvent):
    type: Literal["SetPlanEntitlements"] = "SetPlanEntitlements"
    data: PlanEntitlementsSpec


class OverrideSpec(Grant):
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    enabled: bool = Field(
        default=True,
        description="false: the customer has no access to the feature whatever its plans say",
    )


class SetEntitlementOverride(CloudEvent):
    """The customer's own terms for one feature, replacing its plans' (an override of a
    metered feature without ``limit`` is unlimited)."""

    type: Literal["SetEntitlementOverride"] = "SetEntitlementOverride"
    data: OverrideSpec


class OverrideRef(_Model):
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN)
    feature: str = Field(pattern=FEATURE_KEY_PATTERN)


class RemoveEntitlementOverride(CloudEvent):
    type: Literal["RemoveEntitlementOverride"] = "RemoveEntitlementOverride"
    data: OverrideRef


class GrantSpec(_Model):
    id: str = Field(pattern=ID_PATTERN, description="Chosen by the caller (or the ingress)")
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN)
    feature: str = Field(pattern=FEATURE_KEY_PATTERN)
    units: Quantity | None = Field(
        default=None,
        description="Metered features: units added to the limit while the grant is in force",
    )
    starts_at: EventTime | None = Field(
        default=None, description="Default: when the command is handled"
    )
    expires_at: EventTime | None = Field(default=None, description="Default: never")

    @model_validator(mode="after")
    def _window(self) -> GrantSpec:
        if self.starts_at and self.expires_at and self.expires_at <= self.starts_at:
            raise ValueError("'expires_at' must be after 'starts_at'")
        return self


class GrantEntitlement(CloudEvent):
    """A one-off grant: access to the feature (and ``units`` more of a metered one) from
    ``starts_at`` until ``expires_at``, whatever the customer's plans."""

    type: Literal["GrantEntitlement"] = "GrantEntitlement"
    data: GrantSpec


class EntitlementsConfig(_Model):
    payment_grace_hours: int = Field(
        default=72,
        ge=0,
        le=24 * 60,
        description="Access is kept this long after a payment fails (status past_due); then "
        "denied as payment_pending until paid",
    )
    token_ttl_seconds: int = Field(
        default=900, ge=60, le=86_400, description="How long an entitlement token is valid"
    )
    rate_limit_feature: str | None = Field(
        default=None,
        pattern=FEATURE_KEY_PATTERN,
        description="The config feature whose configuration a token carries as rate_limit_tier",
    )


class ConfigureEntitlements(CloudEvent):
    type: Literal["ConfigureEntitlements"] = "ConfigureEntitlements"
    data: EntitlementsConfig


EntitlementsCommand = Annotated[
    CreateFeature
    | SetPlanEntitlements
    | SetEntitlementOverride
    | RemoveEntitlementOverride
    | GrantEntitlement
    | ConfigureEntitlements,
    Field(discriminator="type"),
]


# --- a check's answer -------------------------------------------------------------------------


class EntitlementView(_Model):
    """One feature for one customer, now."""

    feature: str
    name: str
    kind: FeatureKind
    has_access: bool
    reason: Reason | None = Field(description="Why not, when has_access is false")
    source: Source | None = Field(description="What gives it: a plan, an override, a grant")
    config: dict[str, Any] | None = None
    meter: str | None = None
    usage: DecimalStr | None = Field(
        default=None, description="Metered: usage in the current period"
    )
    limit: DecimalStr | None = Field(
        default=None, description="Metered: the limit, grants included (null: unlimited)"
    )
    remaining: DecimalStr | None = Field(default=None, description="max(limit - usage, 0)")
    limit_mode: LimitMode | None = None
    limit_reached: bool = Field(
        default=False, description="usage >= limit (a soft limit keeps access)"
    )
    period_start: datetime | None = None
    resets_at: datetime | None = Field(
        default=None, description="Metered: when the period ends and usage starts again at 0"
    )


class CustomerEntitlements(_Model):
    customer: str
    status: Standing = Field(
        description="active; past_due (a payment failed, access kept until grace_until); "
        "payment_pending (grace over, denied); suspended (dunning exhausted, denied)"
    )
    grace_until: datetime | None = None
    products: list[str] = Field(description="The plans of the customer's active subscriptions")
    entitlements: list[EntitlementView]


# --- events ---------------------------------------------------------------------------------


class FeatureData(FeatureSpec):
    pass


class FeatureCreated(CloudEvent):
    type: Literal["feature.created"] = "feature.created"
    data: FeatureData


class AccessData(_Model):
    customer: str
    features: list[str] = Field(description="The features concerned, by key")
    reason: str = Field(
        description="granted: subscribed, plan_changed, override, grant, entitlements_changed; "
        "suspended: payment_pending, suspended; restored: paid, voided, limit_raised, "
        "period_reset; revoked: "
        "subscription_ended, plan_changed, override, grant_expired, entitlements_changed"
    )
    invoice_id: str | None = Field(default=None, description="The unpaid (or paid) invoice")
    at: datetime


class EntitlementGranted(CloudEvent):
    """The customer gained access to these features."""

    type: Literal["entitlement.granted"] = "entitlement.granted"
    data: AccessData


class EntitlementRevoked(CloudEvent):
    """The customer lost these features (not for money: that is ``entitlement.suspended``)."""

    type: Literal["entitlement.revoked"] = "entitlement.revoked"
    data: AccessData


class EntitlementSuspended(CloudEvent):
    """Access denied for money: ``payment_pending`` (grace over) or ``suspended`` (dunning
    exhausted). ``features``: every feature the customer had."""

    type: Literal["entitlement.suspended"] = "entitlement.suspended"
    data: AccessData


class EntitlementRestored(CloudEvent):
    type: Literal["entitlement.restored"] = "entitlement.restored"
    data: AccessData


class LimitData(_Model):
    customer: str
    feature: str
    meter: str
    usage: DecimalStr
    limit: DecimalStr
    limit_mode: LimitMode
    period_start: datetime
    period_end: datetime


class EntitlementLimitReached(CloudEvent):
    """Usage reached a metered feature's limit in this period (once per period and feature;
    ``hard``: denied until the period resets or the limit is raised)."""

    type: Literal["entitlement.limit_reached"] = "entitlement.limit_reached"
    data: LimitData


EntitlementsEvent = Annotated[
    FeatureCreated
    | EntitlementGranted
    | EntitlementRevoked
    | EntitlementSuspended
    | EntitlementRestored
    | EntitlementLimitReached,
    Field(discriminator="type"),
]

COMMANDS: tuple[type[CloudEvent], ...] = (
    CreateFeature,
    SetPlanEntitlements,
    SetEntitlementOverride,
    RemoveEntitlementOverride,
    GrantEntitlement,
    ConfigureEntitlements,
)
EVENTS: tuple[type[CloudEvent], ...] = (
    FeatureCreated,
    EntitlementGranted,
    EntitlementRevoked,
    EntitlementSuspended,
    EntitlementRestored,
    EntitlementLimitReached,
)

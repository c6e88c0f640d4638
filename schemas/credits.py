"""Prepaid credits: grants, their voids, automatic top-ups (commands on
``billstream.commands.invoicing.v1``) and the ledger's events (``credit.*`` on
``billstream.events.invoicing.v1``). Invoicing owns credits: they are applied in the same
transaction that finalizes an invoice (docs/credits.md).

Money is integer minor units of the customer's currency: a JSON number with a fraction
(``10.5``), a string or a boolean is refused where an amount is expected.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from schemas.bounds import (
    EXTERNAL_ID_PATTERN,
    ID_PATTERN,
    MAX_MINOR_UNITS,
    Currency,
    EventTime,
    Line,
    ShowBounds,
    Text,
    check_minor_units,
)
from schemas.envelope import CloudEvent
from schemas.pricing import MeterKey, PriceKey


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def integer_money(value: Any) -> Any:
    """Money is an integer of minor units as JSON Schema means it: a number with no fraction
    (``1000``, or ``1000.0``, which every JSON Schema calls an integer); never a number with a
    fraction, a string or a boolean."""
    if isinstance(value, bool | str) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(
            "must be an integer number of minor units (no fraction, no quotes): "
            "1000 is 10.00 in a currency of exponent 2"
        )
    return value


CreditAmount = Annotated[
    int,
    Field(gt=0),  # before the validators, so that JSON Schema (OpenAPI) shows it
    BeforeValidator(integer_money),
    AfterValidator(check_minor_units),
    ShowBounds({"maximum": MAX_MINOR_UNITS}),
]
"""A positive amount of credit in minor units: ``0 < amount <= 10**15``, an integer."""

ThresholdAmount = Annotated[
    int,
    Field(ge=0),
    BeforeValidator(integer_money),
    AfterValidator(check_minor_units),
    ShowBounds({"maximum": MAX_MINOR_UNITS}),
]

CreditSource = Literal["purchased", "promotional", "contract", "credit_note"]
GrantStatus = Literal["pending", "scheduled", "active", "depleted", "expired", "voided"]
EntryKind = Literal["granted", "topped_up", "applied", "reversed", "expired", "voided"]
MAX_SCOPE_KEYS = 100


class CreditScope(_Model):
    """What a grant may pay for: invoice lines of these prices (by key) or on these meters.
    A grant without a scope pays for any line, and for tax when credits apply after tax."""

    prices: list[PriceKey] = Field(default_factory=list, max_length=MAX_SCOPE_KEYS)
    meters: list[MeterKey] = Field(default_factory=list, max_length=MAX_SCOPE_KEYS)

    @model_validator(mode="after")
    def _not_empty(self) -> CreditScope:
        if not self.prices and not self.meters:
            raise ValueError("name at least one price or meter (omit 'scope' for any line)")
        return self


class Rollover(_Model):
    """At expiry, what is left rolls over into a new grant (same source, priority and
    scope) that expires ``expires_after_days`` later."""

    expires_after_days: int = Field(ge=1, le=3660)
    max_amount: CreditAmount | None = Field(
        default=None, description="Roll over at most this much (minor units); omit for all"
    )


class CreditGrantSpec(_Model):
    id: str = Field(pattern=ID_PATTERN, description="Chosen by the caller (or the ingress)")
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    amount: CreditAmount = Field(description="Minor units of the customer's currency")
    currency: Currency
    source: CreditSource = "promotional"
    priority: int = Field(
        default=50, ge=0, le=100, description="0 is applied first, 100 last (default 50)"
    )
    effective_at: EventTime | None = Field(
        default=None, description="When it can first be applied (default: when granted)"
    )
    expires_at: EventTime | None = Field(
        default=None, description="When what is left expires (default: never)"
    )
    scope: CreditScope | None = None
    rollover: Rollover | None = None
    purchase_amount: CreditAmount | None = Field(
        default=None,
        description="A top-up: the customer buys the credit for this much (minor units); "
        "the grant takes effect when its invoice is paid",
    )
    description: Line | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> CreditGrantSpec:
        if (
            self.expires_at is not None
            and self.effective_at is not None
            and self.expires_at <= self.effective_at
        ):
            raise ValueError("expires_at must be after effective_at")
        if self.rollover is not None and self.expires_at is None:
            raise ValueError("a rollover needs an expires_at")
        if self.purchase_amount is not None and self.source != "purchased":
            raise ValueError("purchase_amount (a top-up) needs source 'purchased'")
        return self


class GrantCredits(CloudEvent):
    """Grant a customer credit (immutable; the same grant again is a no-op, another one
    under the same id is refused). With ``purchase_amount`` it is a top-up: an invoice is
    issued and collected, and the grant takes effect when it is paid."""

    type: Literal["GrantCredits"] = "GrantCredits"
    data: CreditGrantSpec


class VoidCreditGrantSpec(_Model):
    grant_id: str = Field(pattern=ID_PATTERN)
    reason: Text | None = Field(default=None, max_length=1024)


class VoidCreditGrant(CloudEvent):
    """Void what is left of a grant. A grant applied to an issued invoice cannot be voided
    (void the invoice first, which returns its credits)."""

    type: Literal["VoidCreditGrant"] = "VoidCreditGrant"
    data: VoidCreditGrantSpec


class CommitmentSpec(_Model):
    """A contract commitment: the customer commits to spend ``amount`` over [start, end).
    Each invoice of a period starting in the term draws it down by its subtotal; usage past
    it is billed at the plan's rates as always; at the end of the term, what was not drawn is
    invoiced as a shortfall true-up."""

    id: str = Field(pattern=ID_PATTERN, description="Chosen by the caller (or the ingress)")
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN)
    currency: Currency
    amount: CreditAmount = Field(description="The commitment, minor units")
    start: EventTime
    end: EventTime
    description: Line | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _term(self) -> CommitmentSpec:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class CreateCommitment(CloudEvent):
    """Record a commitment (immutable: the same one again is a no-op)."""

    type: Literal["CreateCommitment"] = "CreateCommitment"
    data: CommitmentSpec


class AutoTopUpSpec(_Model):
    """Buy ``amount`` of credit for ``purchase_amount`` when the customer's projected
    balance falls below ``threshold`` (once per crossing); ``enabled: false`` turns it off."""

    customer: str = Field(pattern=EXTERNAL_ID_PATTERN)
    enabled: bool = True
    threshold: ThresholdAmount = 0
    amount: CreditAmount = Field(description="Credit bought each time, minor units")
    purchase_amount: CreditAmount | None = Field(
        default=None, description="What the customer pays (default: amount)"
    )
    priority: int = Field(default=50, ge=0, le=100)
    expires_after_days: int | None = Field(default=None, ge=1, le=3660)


class ConfigureAutoTopUp(CloudEvent):
    type: Literal["ConfigureAutoTopUp"] = "ConfigureAutoTopUp"
    data: AutoTopUpSpec


# --- events ------------------------------------------------------------------------


class CreditGrantData(_Model):
    grant_id: str
    customer: str = Field(description="The customer's external_id")
    currency: str
    amount: int = Field(description="Granted, minor units")
    balance: int = Field(description="What is left of it now, minor units")
    status: GrantStatus
    source: CreditSource
    priority: int
    effective_at: datetime
    expires_at: datetime | None = None
    scope: CreditScope | None = None
    rollover: Rollover | None = None
    purchase_amount: int | None = None
    invoice_id: str | None = Field(default=None, description="A top-up's invoice")
    rolled_over_from: str | None = Field(default=None, description="The grant it rolled from")
    description: str | None = None


class CreditEntryData(_Model):
    entry_id: str
    grant_id: str
    customer: str
    currency: str
    kind: EntryKind
    amount: int = Field(description="Signed, minor units: + adds to the grant, - takes from it")
    at: datetime = Field(description="When it counts in the balance")
    invoice_id: str | None = None
    grant_balance: int = Field(description="The grant's balance after this entry")


class CreditGranted(CloudEvent):
    """A grant took effect (at once, or when its top-up invoice was paid, or rolled over)."""

    type: Literal["credit.granted"] = "credit.granted"
    data: CreditGrantData


class CreditVoided(CloudEvent):
    type: Literal["credit.voided"] = "credit.voided"
    data: CreditGrantData


class CreditApplied(CloudEvent):
    """Credit of a grant paid part of a finalized invoice (``amount`` is negative)."""

    type: Literal["credit.applied"] = "credit.applied"
    data: CreditEntryData


class CreditReversed(CloudEvent):
    """An invoice the grant paid for was voided: the credit is returned."""

    type: Literal["credit.reversed"] = "credit.reversed"
    data: CreditEntryData


class CreditExpired(CloudEvent):
    """What was left of a grant expired at its ``expires_at`` (``amount`` is negative)."""

    type: Literal["credit.expired"] = "credit.expired"
    data: CreditEntryData


COMMANDS: tuple[type[CloudEvent], ...] = (
    GrantCredits,
    VoidCreditGrant,
    ConfigureAutoTopUp,
    CreateCommitment,
)
EVENTS: tuple[type[CloudEvent], ...] = (
    CreditGranted,
    CreditVoided,
    CreditApplied,
    CreditReversed,
    CreditExpired,
)

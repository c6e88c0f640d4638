"""Partners commands (``billstream.commands.partners.v1``), events
(``billstream.events.partners.v1``) and the API's read shapes (docs/partners.md).

A *partner* (an agent, a reseller) has a *tier*; *commission rules* are defined per partner
tier, for a plan, a product (a price key, or a one-off invoice's ``item``) or as the tier's
default: ``percent`` of the paid amount net of tax, discounts and credits, ``fixed`` per
invoice, or ``tiered`` by the partner's paid volume in the month, with optional caps per
invoice and per month. A customer is *attributed* to a partner from an effective date.

When an attributed invoice is paid, a commission *accrues* (one ledger entry per invoice and
rule, rounded once, half-even, to minor units); a refund or a credit note *reverses* it
exactly, in proportion. A *commission statement* per partner, month and currency lists the
ledger entries not yet on a statement, each traceable to its invoice; its total is payable
to the partner and payouts are recorded against it.

All amounts are integer minor units of the entry's currency.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import (
    EXTERNAL_ID_PATTERN,
    LINE_PATTERN,
    Currency,
    EventTime,
    Line,
    PositiveMinorUnits,
    ShowBounds,
    optional_line,
    present,
    show_model_bounds,
)
from schemas.envelope import CloudEvent
from schemas.pricing import KEY_PATTERN, NonNegDecimal

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
PERIOD_PATTERN = r"^(19[7-9][0-9]|20[0-9][0-9])-(0[1-9]|1[0-2])$"  # a UTC month, "2026-03"
STATEMENT_ID_PATTERN = r"^cst_[0-9a-f]{32}$"
ENTRY_ID_PATTERN = r"^cme_[0-9a-f]{32}$"
MAX_TIERS = 20

RuleKind = Literal["percent", "fixed", "tiered"]
EntryKind = Literal["accrued", "reversed"]
LineKind = Literal["accrued", "reversed", "carried"]
Cause = Literal["invoice_paid", "credit_note", "refund", "credit_note_voided"]
StatementStatus = Literal["payable", "paid", "carried"]

_NAMESPACE = uuid.UUID("0b7e4f0e-3c0a-5d55-9c3e-2b1f7a6d8e41")


def statement_id(tenant_id: str, partner_id: str, period: str, currency: str) -> str:
    """The id of the statement of ``partner_id`` for ``period`` in ``currency``: the same on
    every replica and every retry, so a statement is issued once."""
    key = f"{tenant_id}\x1f{partner_id}\x1f{period}\x1f{currency}"
    return "cst_" + uuid.uuid5(_NAMESPACE, key).hex


def entry_id(tenant_id: str, kind: EntryKind, *parts: str) -> str:
    """The id of a ledger entry: an accrual by (invoice, rule), a reversal by (invoice, rule,
    the cause's kind and id) — the same on every replay."""
    key = "\x1f".join((tenant_id, kind, *parts))
    return "cme_" + uuid.uuid5(_NAMESPACE, key).hex


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _at_most_one(value: Decimal) -> Decimal:
    if value > 1:
        raise ValueError("must be a fraction from 0 to 1 ('0.1' is 10 %)")
    return value


Rate = Annotated[
    NonNegDecimal,
    AfterValidator(_at_most_one),
    ShowBounds({"maximum": 1, "pattern": r"^0*(1(\.0+)?|0?(\.[0-9]{1,12}0*)?)$"}),
]
"""A commission rate as an exact decimal fraction: ``"0.1"`` is 10 %; ``0 <= p <= 1``."""

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]


# --- commands -------------------------------------------------------------------------------


class PartnerSpec(_Model):
    partner_id: str = Field(pattern=SLUG_PATTERN, description="Chosen by the tenant: 'acme-travel'")
    name: Line = Field(min_length=1, max_length=256)
    tier: str = Field(
        pattern=SLUG_PATTERN,
        description="The partner's tier: which commission rules apply. A change applies to "
        "commissions accrued after it",
    )
    email: Annotated[str, ShowBounds({"pattern": LINE_PATTERN})] | None = Field(
        default=None, max_length=320, description="Where statements go"
    )

    _email = field_validator("email")(optional_line)


class UpsertPartner(CloudEvent):
    """Creates a partner, or replaces its name, tier and email."""

    type: Literal["UpsertPartner"] = "UpsertPartner"
    data: PartnerSpec


class CommissionTier(_Model):
    up_to: PositiveMinorUnits | None = Field(
        default=None,
        description="The tier covers the partner's monthly paid volume below this many minor "
        "units (from the previous tier's up_to); null for the last tier",
    )
    percent: Rate = Field(description="The rate on the volume in this tier: '0.1' is 10 %")


class CommissionRuleSpec(_Model):
    # the checks between fields are field validators (validate_default), so a 422 names the
    # field a client got wrong: each runs on its field and reads the fields declared before

    key: str = Field(pattern=SLUG_PATTERN, description="Unique per tenant; re-defining replaces")
    partner_tier: str = Field(pattern=SLUG_PATTERN, description="The partners' tier it is for")
    plan: str | None = Field(
        default=None, pattern=KEY_PATTERN, description="Only lines of invoices of this plan"
    )
    product: str | None = Field(
        default=None,
        pattern=KEY_PATTERN,
        validate_default=True,
        description="Only lines of this price key (or a one-off invoice's item); not with plan. "
        "Neither: the tier's default rule",
    )
    kind: RuleKind = Field(
        description="percent: of the paid amount net of tax, discounts and credits; fixed: an "
        "amount per paid invoice; tiered: rates by the partner's paid volume in the month"
    )
    percent: Rate | None = Field(
        default=None, validate_default=True, description="For kind percent: '0.1' is 10 %"
    )
    amount: PositiveMinorUnits | None = Field(
        default=None, validate_default=True, description="For kind fixed: minor units per invoice"
    )
    tiers: list[CommissionTier] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TIERS,
        validate_default=True,
        description="For kind tiered: up_to strictly ascending, the last one null",
    )
    cap_per_invoice: PositiveMinorUnits | None = Field(
        default=None, description="At most this much commission per invoice, minor units"
    )
    cap_per_period: PositiveMinorUnits | None = Field(
        default=None,
        description="At most this much commission per partner and month, minor units",
    )
    currency: Currency | None = Field(
        default=None,
        validate_default=True,
        description="Required when the rule has an amount (a fixed amount, tier bounds, caps): "
        "it then applies to invoices in this currency only. A percent rule without caps "
        "applies to any currency",
    )

    @field_validator("product")
    @classmethod
    def _one_scope(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("plan") is not None:
            raise ValueError("give at most one of plan and product")
        return v

    @field_validator("percent", "amount", "tiers")
    @classmethod
    def _by_kind(cls, v: object, info: ValidationInfo) -> object:
        kind = info.data.get("kind")
        own = {"percent": "percent", "amount": "fixed", "tiers": "tiered"}[str(info.field_name)]
        if kind is None:
            return v
        if kind == own and v is None:
            raise ValueError(f"a {own} rule needs {info.field_name!r}")
        if kind != own and v is not None:
            raise ValueError(f"only for {own} rules, not {kind}")
        return v

    @field_validator("tiers")
    @classmethod
    def _ascending(cls, v: list[CommissionTier] | None) -> list[CommissionTier] | None:
        if v is None:
            return v
        *inner, last = v
        if last.up_to is not None:
            raise ValueError(f"the last tier's up_to (tiers[{len(v) - 1}]) must be null")
        previous = 0
        for i, tier in enumerate(inner):
            if tier.up_to is None:
                raise ValueError(f"tiers[{i}].up_to: only the last tier's may be null")
            if tier.up_to <= previous:
                raise ValueError(f"tiers[{i}].up_to must be more than the tier before's")
            previous = tier.up_to
        return v

    @field_validator("currency")
    @classmethod
    def _currency_for_amounts(cls, v: str | None, info: ValidationInfo) -> str | None:
        tiers = info.data.get("tiers") or []
        has_amount = (
            info.data.get("amount") is not None
            or len(tiers) > 1
            or info.data.get("cap_per_invoice") is not None
            or info.data.get("cap_per_period") is not None
        )
        if has_amount and v is None:
            raise ValueError(
                "required: the rule has an amount (a fixed amount, tier bounds or caps)"
            )
        return v

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # what the validators refuse, said in OpenAPI where JSON Schema can say it (tier
        # bounds ascending cannot be); never in the published schemas
        def kind(k: str) -> dict[str, Any]:
            return {"required": ["kind"], "properties": {"kind": {"const": k}}}

        def null(name: str) -> dict[str, Any]:
            return {"properties": {name: {"type": "null"}}}

        own = {"percent": "percent", "fixed": "amount", "tiered": "tiers"}
        bounded = {"type": "array", "minItems": 2}  # a tier with an up_to
        rules: list[dict[str, Any]] = [
            {"not": {"allOf": [present("plan"), present("product")]}},
            *(
                {"if": kind(k), "then": present(name), "else": null(name)}
                for k, name in own.items()
            ),
            {
                "if": {"anyOf": [
                    *(present(n) for n in ("amount", "cap_per_invoice", "cap_per_period")),
                    {"required": ["tiers"], "properties": {"tiers": bounded}},
                ]},
                "then": present("currency"),
            },
        ]  # fmt: skip
        return show_model_bounds(cls is CommissionRuleSpec, core_schema, handler, {"allOf": rules})


class UpsertCommissionRule(CloudEvent):
    """Defines a commission rule, or replaces the rule of that key for commissions accrued
    after it."""

    type: Literal["UpsertCommissionRule"] = "UpsertCommissionRule"
    data: CommissionRuleSpec


class AttributionSpec(_Model):
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    partner_id: str = Field(pattern=SLUG_PATTERN)
    effective_from: EventTime = Field(
        description="The customer's invoices whose period starts at or after this belong to "
        "the partner (until a later attribution)"
    )


class AttributeCustomer(CloudEvent):
    """Attributes a customer to a partner from a date. The partner must exist."""

    type: Literal["AttributeCustomer"] = "AttributeCustomer"
    data: AttributionSpec


class StatementSpec(_Model):
    partner_id: str = Field(pattern=SLUG_PATTERN)
    period: str = Field(pattern=PERIOD_PATTERN, description="A UTC month that has ended: '2026-03'")


class IssueCommissionStatement(CloudEvent):
    """Issues the partner's statement(s) for a month that has ended: one per currency, over
    every ledger entry effective before the month's end and not on a statement yet. Issuing
    the same partner and month again returns the statement(s) issued."""

    type: Literal["IssueCommissionStatement"] = "IssueCommissionStatement"
    data: StatementSpec


class PayoutSpec(_Model):
    payout_id: Line = Field(min_length=1, max_length=64, description="Chosen by the ingress")
    statement_id: str = Field(pattern=STATEMENT_ID_PATTERN)
    amount: PositiveMinorUnits = Field(
        description="Minor units paid to the partner; at most what is left payable"
    )
    reference: Line = Field(
        min_length=1, max_length=256, description="The transfer's reference, as the bank has it"
    )
    paid_at: EventTime | None = Field(default=None, description="Default: when it is recorded")


class RecordCommissionPayout(CloudEvent):
    """Records a payout to the partner against a statement."""

    type: Literal["RecordCommissionPayout"] = "RecordCommissionPayout"
    data: PayoutSpec


PartnersCommand = Annotated[
    UpsertPartner
    | UpsertCommissionRule
    | AttributeCustomer
    | IssueCommissionStatement
    | RecordCommissionPayout,
    Field(discriminator="type"),
]


# --- events ---------------------------------------------------------------------------------


class CommissionData(_Model):
    """One ledger entry: a commission accrued by a paid invoice for one rule, (part of) it
    reversed by a credit note or a refund, or what a credit note reversed accrued again
    when the credit note is voided (kind accrued, cause credit_note_voided)."""

    entry_id: str = Field(pattern=ENTRY_ID_PATTERN)
    kind: EntryKind
    partner_id: str
    customer: str
    invoice_id: str
    invoice_number: str | None = None
    rule: str = Field(description="The rule's key")
    rule_kind: RuleKind
    currency: str
    base_minor: str = Field(
        description="The exact base the commission was computed on, in minor units: a decimal "
        "('12345.5'), or a fraction ('10000/3') when it has no finite decimal form. For a "
        "reversal: the net kept after the cause"
    )
    amount: int = Field(gt=0, description="Minor units, rounded once (half-even)")
    period: str = Field(pattern=PERIOD_PATTERN, description="The month of effective_at (UTC)")
    effective_at: datetime = Field(description="When the cause happened (the paid or refund time)")
    cause: Cause
    cause_id: str = Field(description="The invoice, credit note (also when voided) or refund id")
    accrual_id: str | None = Field(
        default=None,
        description="For a reversal: the entry_id of the accrual it reverses; for a "
        "restoration (cause credit_note_voided): the accrual it restores",
    )
    statement_id: str | None = Field(
        default=None, description="The statement it is on, once one lists it (API only)"
    )


class CommissionAccrued(CloudEvent):
    type: Literal["commission.accrued"] = "commission.accrued"
    data: CommissionData


class CommissionReversed(CloudEvent):
    type: Literal["commission.reversed"] = "commission.reversed"
    data: CommissionData


class StatementLine(_Model):
    entry_id: str = Field(
        description="The ledger entry; for a carried line, the statement carried from"
    )
    kind: LineKind = Field(
        description="accrued (+), reversed (-), or carried: an earlier statement's negative total"
    )
    invoice_id: str | None = None
    invoice_number: str | None = None
    customer: str | None = None
    rule: str | None = None
    cause: Cause | None = None
    effective_at: datetime | None = None
    amount: int = Field(description="Signed minor units: accruals positive, the rest negative")


class StatementData(_Model):
    statement_id: str = Field(pattern=STATEMENT_ID_PATTERN)
    number: str = Field(description="Gapless per tenant and year: CS-2026-000001")
    partner_id: str
    partner_name: str
    period: str = Field(pattern=PERIOD_PATTERN)
    currency: str
    lines: list[StatementLine]
    total: int = Field(description="Σ lines (signed), minor units")
    amount_payable: int = Field(ge=0, description="total when positive, else 0")
    amount_paid: int = Field(ge=0)
    status: StatementStatus = Field(
        description="payable: owed to the partner; paid: fully paid (or nothing was owed); "
        "carried: a negative total, carried as a line onto the partner's next statement in "
        "this currency"
    )
    carried_to: str | None = Field(
        default=None, description="For a carried statement: the statement that took it over"
    )
    issued_at: datetime


class CommissionStatementIssued(CloudEvent):
    type: Literal["commission.statement_issued"] = "commission.statement_issued"
    data: StatementData


class PayoutData(_Model):
    payout_id: str
    statement_id: str
    number: str = Field(description="The statement's number")
    partner_id: str
    currency: str
    amount: int = Field(gt=0)
    reference: str
    paid_at: datetime
    amount_paid: int = Field(description="The statement's payouts so far, minor units")
    status: StatementStatus


class CommissionPayoutRecorded(CloudEvent):
    type: Literal["commission.payout_recorded"] = "commission.payout_recorded"
    data: PayoutData


# --- API only (not on Kafka) ----------------------------------------------------------------


class PartnerData(_Model):
    partner_id: str
    name: str
    tier: str
    email: str | None = None
    created_at: datetime
    updated_at: datetime


class CommissionRuleData(CommissionRuleSpec):
    updated_at: datetime


class AttributionData(_Model):
    customer: str
    partner_id: str
    effective_from: datetime
    recorded_at: datetime


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """The UTC start (inclusive) and end (exclusive) of ``period`` ('2026-03')."""
    if not re.fullmatch(PERIOD_PATTERN, period):
        raise ValueError(f"not a month: {period!r}")
    year, month = int(period[:4]), int(period[5:])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(at: datetime) -> str:
    """The UTC month ('2026-03') of ``at``."""
    utc = at.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


COMMANDS: tuple[type[CloudEvent], ...] = (
    UpsertPartner,
    UpsertCommissionRule,
    AttributeCustomer,
    IssueCommissionStatement,
    RecordCommissionPayout,
)
EVENTS: tuple[type[CloudEvent], ...] = (
    CommissionAccrued,
    CommissionReversed,
    CommissionStatementIssued,
    CommissionPayoutRecorded,
)

"""Invoicing commands (``billstream.commands.invoicing.v1``) and events
(``billstream.events.invoicing.v1``): customers, plans, subscriptions, billing runs, invoices.

Money is integer minor units of the invoice currency; quantities, unit prices and tax rates
are Decimal, serialised as JSON strings.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
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
    EXTERNAL_ID_PATTERN,
    ID_PATTERN,
    LINE_PATTERN,
    Currency,
    EventTime,
    Line,
    ShowBounds,
    Text,
    optional_line,
    present,
    show_model_bounds,
)
from schemas.credit_notes import (
    CreditNoteIssued,
    CreditNoteVoided,
    IssueCreditNote,
    VoidCreditNote,
)
from schemas.credits import (
    ConfigureAutoTopUp,
    CreateCommitment,
    CreditApplied,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    CreditVoided,
    GrantCredits,
    VoidCreditGrant,
)
from schemas.decimals import DecimalStr
from schemas.discounts import (
    ApplyDiscount,
    CouponCreated,
    CreateCoupon,
    CreatePromotionCode,
    DiscountApplied,
    DiscountRemoved,
    PromotionCodeCreated,
    RemoveDiscount,
)
from schemas.envelope import CloudEvent
from schemas.locales import Locale
from schemas.metering import METER_KEY_PATTERN
from schemas.one_off import CreateInvoice, FinalizeInvoice
from schemas.pricing import NonNegDecimal, PlanSpec, TaxRateNames
from schemas.taxes import (
    MAX_TAX_IDS,
    Buyer,
    CreateTaxRate,
    TaxAmount,
    TaxId,
    TaxRateCreated,
    TaxRateUpdated,
    TaxRounding,
    TaxStatus,
)

PLAN_KEY_PATTERN = METER_KEY_PATTERN
Rounding = Literal["half_even", "half_up", "half_down", "up", "down", "ceiling", "floor"]


def hour_aligned(t: datetime | None) -> datetime | None:
    if t is not None and (t.minute or t.second or t.microsecond):
        raise ValueError("must be a whole hour (usage is kept in hourly buckets)")
    return t


MAX_TRIAL_DAYS = 730


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- customers ---------------------------------------------------------------------


class Address(_Model):
    line1: Line = Field(max_length=256)
    line2: Line | None = Field(default=None, max_length=256)
    city: Line | None = Field(default=None, max_length=128)
    postal_code: Line | None = Field(default=None, max_length=32)
    state: Line | None = Field(default=None, max_length=128)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


# OpenAPI only (the published schemas keep what they said): what CustomerSpec's validators
# refuse, where JSON Schema can say it
_ZERO = "^0+(\\.0+)?$"
TaxRate = Annotated[
    NonNegDecimal,
    ShowBounds({"maximum": 1, "pattern": "^0*(1(\\.0+)?|0(\\.[0-9]+)?)$"}),  # 0 to 1
]
_EXEMPT_WITH_A_RATE = {
    "required": ["tax_exempt", "tax_rate"],
    "properties": {
        "tax_exempt": {"const": True},
        "tax_rate": {"not": {"anyOf": [{"type": "null"}, {"const": 0}, {"pattern": _ZERO}]}},
    },
}
_A_RATE_AND_RATES = {  # give tax_rate or tax_rates, not both
    "required": ["tax_rate", "tax_rates"],
    "properties": {"tax_rate": {"not": {"type": "null"}}, "tax_rates": {"not": {"type": "null"}}},
}


InvoiceTo = Literal["self", "parent"]
# the cross-field rule of CustomerSpec, stated in its JSON schema: invoiced to a parent,
# it names one
_INVOICED_TO_A_PARENT: dict[str, Any] = {
    "if": {"properties": {"invoice_to": {"const": "parent"}}, "required": ["invoice_to"]},
    "then": present("parent"),
}


class CustomerSpec(_Model):
    """A customer; ``external_id`` is the subject its usage events carry."""

    external_id: str = Field(pattern=EXTERNAL_ID_PATTERN)
    name: Line = Field(min_length=1, max_length=256)
    email: Annotated[str, ShowBounds({"pattern": LINE_PATTERN})] | None = Field(
        default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320
    )
    currency: Currency
    tax_rate: TaxRate | None = Field(
        default=None, description="A fraction: '0.19' is 19 %. Omit for no tax."
    )
    tax_exempt: bool = Field(default=False, description="Same as tax_status 'exempt'")
    tax_rates: TaxRateNames | None = Field(
        default=None,
        description="Tax rates by name (docs/taxes.md), overriding the tenant's default; "
        "not with 'tax_rate'",
    )
    tax_status: TaxStatus | None = Field(
        default=None,
        description="taxable (the default), exempt, or reverse_charge (EU B2B: the invoice "
        "shows the rates at 0 with the reverse-charge note)",
    )
    tax_ids: list[TaxId] = Field(default_factory=list, max_length=MAX_TAX_IDS)
    net_terms_days: int = Field(default=30, ge=0, le=365)
    billing_address: Address | None = None
    locale: Locale | None = Field(
        default=None,
        description="The language of the customer's invoices and portal ('en', 'id'); "
        "default: the tenant's branding's",
    )
    # customer hierarchies (docs/hierarchies.md)
    parent: str | None = Field(
        default=None,
        pattern=EXTERNAL_ID_PATTERN,
        description="The external_id of its parent customer (of the same tenant); null: none. "
        "A parent that would make a cycle is refused",
    )
    invoice_to: InvoiceTo = Field(
        default="self",
        description="self: the customer is invoiced on its own subscriptions; parent: its usage "
        "is billed on its payer's invoices (the nearest ancestor invoiced to itself), in a "
        "section of its own — same currency as the payer, no subscriptions of its own",
    )

    _email = field_validator("email")(optional_line)

    @field_validator("tax_rate")
    @classmethod
    def _rate(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and not (Decimal(0) <= v <= Decimal(1)):
            raise ValueError("must be a fraction between 0 and 1 ('0.19' is 19 %)")
        return v

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        keywords = {
            "not": {"anyOf": [_EXEMPT_WITH_A_RATE, _A_RATE_AND_RATES]},
            **_INVOICED_TO_A_PARENT,
        }
        return show_model_bounds(cls is CustomerSpec, core_schema, handler, keywords)

    @model_validator(mode="after")
    def _exempt_has_no_rate(self) -> CustomerSpec:
        if self.tax_exempt and self.tax_rate:
            raise ValueError("tax_exempt customers cannot have a tax_rate")
        if self.tax_exempt and self.tax_status not in (None, "exempt"):
            raise ValueError(f"tax_exempt contradicts tax_status {self.tax_status!r}")
        if self.tax_rate is not None and self.tax_rates is not None:
            raise ValueError("give 'tax_rate' or 'tax_rates', not both")
        if self.parent == self.external_id:
            raise ValueError("a customer cannot be its own parent")
        if self.invoice_to == "parent" and self.parent is None:
            raise ValueError("invoice_to 'parent' needs a parent")
        return self

    @property
    def taxability(self) -> TaxStatus:
        """The customer's tax status: ``tax_status``, else exempt if ``tax_exempt``."""
        return self.tax_status or ("exempt" if self.tax_exempt else "taxable")


class UpsertCustomer(CloudEvent):
    """Create a customer, or update the one with this ``external_id``."""

    type: Literal["UpsertCustomer"] = "UpsertCustomer"
    data: CustomerSpec


# --- plans -------------------------------------------------------------------------


class CreatePlan(CloudEvent):
    """Define a plan. Re-sending the identical definition succeeds; a different one fails
    (plans are immutable: subscriptions change to a new plan at a period boundary)."""

    type: Literal["CreatePlan"] = "CreatePlan"
    data: PlanSpec


# --- subscriptions -----------------------------------------------------------------


class SubscriptionSpec(_Model):
    id: str = Field(pattern=ID_PATTERN, description="Chosen by the caller (or the ingress).")
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    plan: str = Field(pattern=PLAN_KEY_PATTERN, description="The plan's key")
    start: EventTime = Field(description="The billing anchor: periods start here (UTC hour)")
    trial_days: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TRIAL_DAYS,
        description="A trial of this many days from 'start' (0: none), overriding the plan's",
    )
    trial_end: EventTime | None = Field(
        default=None, description="The trial ends here (a whole UTC hour after 'start')"
    )
    trial_end_behavior: Literal["convert", "cancel"] = Field(
        default="convert",
        description="At the trial's end: convert (paid periods start there) or cancel (the "
        "subscription ends there)",
    )
    bill_trial_usage: bool = Field(
        default=False, description="Bill the usage of the trial (its flat fees are never billed)"
    )

    _start = field_validator("start", "trial_end")(hour_aligned)

    @model_validator(mode="after")
    def _one_trial(self) -> SubscriptionSpec:
        if self.trial_end is not None and self.trial_days is not None:
            raise ValueError("give 'trial_days' or 'trial_end', not both")
        if self.trial_end is not None and self.trial_end <= self.start:
            raise ValueError("'trial_end' must be after 'start'")
        return self


class CreateSubscription(CloudEvent):
    type: Literal["CreateSubscription"] = "CreateSubscription"
    data: SubscriptionSpec


class CancelSpec(_Model):
    subscription_id: str = Field(pattern=ID_PATTERN)
    mode: Literal["at_period_end", "immediately"]
    at: EventTime | None = Field(
        default=None,
        description="For 'immediately': when it ends (default: when the command is handled). "
        "Flat fees are prorated to the second; usage is billed up to the end of that hour.",
    )

    @model_validator(mode="after")
    def _at_only_immediately(self) -> CancelSpec:
        if self.at is not None and self.mode != "immediately":
            raise ValueError("'at' applies to mode 'immediately' only")
        return self


class CancelSubscription(CloudEvent):
    type: Literal["CancelSubscription"] = "CancelSubscription"
    data: CancelSpec


class PlanChangeSpec(_Model):
    subscription_id: str = Field(pattern=ID_PATTERN)
    plan: str = Field(pattern=PLAN_KEY_PATTERN)
    mode: Literal["at_period_end", "immediately"] = Field(
        default="at_period_end",
        description="at_period_end: the new plan starts at the next period boundary; "
        "immediately: the current period is cut at 'at' on the old plan and the new plan "
        "starts there, both prorated to the second",
    )
    at: EventTime | None = Field(
        default=None,
        description="For 'immediately': when (default: when the command is handled), in the "
        "current period",
    )

    @model_validator(mode="after")
    def _at_only_immediately(self) -> PlanChangeSpec:
        if self.at is not None and self.mode != "immediately":
            raise ValueError("'at' applies to mode 'immediately' only")
        return self


class ChangeSubscriptionPlan(CloudEvent):
    """Switch plans at the next period boundary (the current period is billed on the old),
    or immediately (both plans prorated to the second)."""

    type: Literal["ChangeSubscriptionPlan"] = "ChangeSubscriptionPlan"
    data: PlanChangeSpec


# --- billing runs and invoices -----------------------------------------------------


class BillingRunSpec(_Model):
    id: str = Field(pattern=ID_PATTERN)
    as_of: EventTime = Field(
        description="Bill every period that ended by this time and finalize the drafts due"
    )


class RunBilling(CloudEvent):
    type: Literal["RunBilling"] = "RunBilling"
    data: BillingRunSpec


class InvoiceActionSpec(_Model):
    invoice_id: str = Field(pattern=ID_PATTERN)
    reason: Text | None = Field(default=None, max_length=1024)


class VoidInvoice(CloudEvent):
    type: Literal["VoidInvoice"] = "VoidInvoice"
    data: InvoiceActionSpec


class MarkInvoiceUncollectible(CloudEvent):
    type: Literal["MarkInvoiceUncollectible"] = "MarkInvoiceUncollectible"
    data: InvoiceActionSpec


class InvoicingConfig(_Model):
    rounding: Rounding = Field(default="half_even", description="How each line is rounded")
    grace_period_hours: int = Field(
        default=1, ge=0, le=24 * 31, description="Drafts finalize this long after period end"
    )
    number_prefix: str = Field(default="INV", pattern=r"^[A-Z0-9][A-Z0-9\-]{0,15}$")
    credit_note_prefix: str = Field(
        default="CN",
        pattern=r"^[A-Z0-9][A-Z0-9\-]{0,15}$",
        description="Credit notes are numbered <prefix>-<year>-<6 digits>, gapless",
    )
    credits_apply: Literal["after_tax", "before_tax"] = Field(
        default="after_tax",
        description="after_tax: credits pay the total like a payment (the tax is the tax of "
        "the supply); before_tax: credits reduce the taxable subtotal (docs/credits.md)",
    )
    late_usage_grace_hours: int = Field(
        default=72,
        ge=0,
        le=24 * 31,
        description="Late usage of an ended subscription is billed on one adjustment invoice "
        "this long after it ended",
    )
    trial_will_end_days: int = Field(
        default=3,
        ge=0,
        le=30,
        description="subscription.trial_will_end is emitted this many days before a trial ends",
    )
    tax_rates: TaxRateNames = Field(
        default_factory=list,
        description="The tenant's default tax rates by name, for customers, plans and prices "
        "that name none (docs/taxes.md)",
    )
    tax_rounding: TaxRounding = Field(
        default="invoice",
        description="invoice: tax rounded once per rate on the invoice; line: on each line",
    )
    reverse_charge_note: Line = Field(
        default="Reverse charge: VAT to be accounted for by the recipient "
        "(Article 196, Council Directive 2006/112/EC).",
        max_length=512,
        description="Printed on a reverse-charge customer's invoices",
    )
    exempt_note: Line = Field(
        default="Exempt from tax.",
        max_length=512,
        description="Printed on a tax-exempt customer's invoices",
    )


class ConfigureInvoicing(CloudEvent):
    type: Literal["ConfigureInvoicing"] = "ConfigureInvoicing"
    data: InvoicingConfig


InvoicingCommand = Annotated[
    UpsertCustomer
    | CreatePlan
    | CreateSubscription
    | CancelSubscription
    | ChangeSubscriptionPlan
    | RunBilling
    | VoidInvoice
    | MarkInvoiceUncollectible
    | ConfigureInvoicing
    | GrantCredits
    | VoidCreditGrant
    | ConfigureAutoTopUp
    | CreateCommitment
    | CreateCoupon
    | CreatePromotionCode
    | ApplyDiscount
    | RemoveDiscount
    | IssueCreditNote
    | VoidCreditNote
    | CreateInvoice
    | FinalizeInvoice
    | CreateTaxRate,
    Field(discriminator="type"),
]


# --- events ------------------------------------------------------------------------


class CustomerData(CustomerSpec):
    customer_id: str


class CustomerCreated(CloudEvent):
    type: Literal["customer.created"] = "customer.created"
    data: CustomerData


class CustomerUpdated(CloudEvent):
    type: Literal["customer.updated"] = "customer.updated"
    data: CustomerData


class PlanData(PlanSpec):
    plan_id: str


class PlanCreated(CloudEvent):
    type: Literal["plan.created"] = "plan.created"
    data: PlanData


SubscriptionStatus = Literal["active", "ended"]


class SubscriptionData(_Model):
    subscription_id: str
    customer: str = Field(description="The customer's external_id")
    plan: str
    status: SubscriptionStatus
    start: datetime
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    next_plan: str | None = None
    ended_at: datetime | None = None
    trial_start: datetime | None = None
    trial_end: datetime | None = Field(
        default=None, description="Set for a subscription with a trial: when it ends"
    )


class SubscriptionCreated(CloudEvent):
    type: Literal["subscription.created"] = "subscription.created"
    data: SubscriptionData


class SubscriptionUpdated(CloudEvent):
    """Cancellation scheduled, or a plan change scheduled or applied."""

    type: Literal["subscription.updated"] = "subscription.updated"
    data: SubscriptionData


class SubscriptionEnded(CloudEvent):
    type: Literal["subscription.ended"] = "subscription.ended"
    data: SubscriptionData


class SubscriptionTrialWillEnd(CloudEvent):
    """A trial ends in InvoicingConfig.trial_will_end_days days (once per subscription)."""

    type: Literal["subscription.trial_will_end"] = "subscription.trial_will_end"
    data: SubscriptionData


InvoiceStatus = Literal["draft", "finalized", "paid", "void", "uncollectible"]
InvoiceKind = Literal["subscription", "one_off", "adjustment", "top_up", "true_up"]


class TierLine(_Model):
    tier: int
    quantity: DecimalStr
    unit_price: DecimalStr
    flat_fee: DecimalStr
    amount: DecimalStr = Field(description="Exact, in major units, before the line is rounded")


class InvoiceLine(_Model):
    price_key: str
    kind: str
    description: str
    meter: str | None = None
    subject: str | None = None
    period_start: datetime
    period_end: datetime
    quantity: DecimalStr = Field(description="The value the line was computed from")
    unit_price: DecimalStr | None = None
    tiers: list[TierLine]
    proration: DecimalStr = Field(
        description="Share of the period billed: scales flat fees and minimum spends, not usage"
    )
    minimum_applied: bool
    amount: int = Field(description="Minor units, rounded once")
    adjustment_for: str | None = Field(
        default=None, description="For late usage: the earlier period this line corrects"
    )
    grant_id: str | None = Field(
        default=None, description="For a credit line (kind 'credit'): the grant applied"
    )
    tax_rate: DecimalStr | None = Field(
        default=None,
        description="The line's own tax rate (a one-off invoice's line); None: the invoice's",
    )
    applies_to: int | None = Field(
        default=None,
        description="For a discount line (kind 'discount'): the position of the line it reduces",
    )
    discount_id: str | None = Field(
        default=None, description="For a discount line: the discount (of a coupon) applied"
    )
    taxes: list[TaxAmount] = Field(
        default_factory=list,
        description="Per rate: the line's taxable amount (net of its discounts) and tax; the "
        "lines' taxes add up to the invoice's tax_breakdown",
    )


class InvoiceData(_Model):
    invoice_id: str
    number: str | None = Field(
        default=None, description="Assigned at finalization: INV-2026-000042"
    )
    status: InvoiceStatus
    customer: str
    subscription_id: str | None = Field(
        default=None,
        description="None (absent on the wire) for an invoice outside any subscription: a "
        "credit top-up or a commitment's true-up",
    )
    kind: InvoiceKind = Field(
        default="subscription",
        description="subscription: a period of a subscription; one_off: lines given by the "
        "caller; adjustment: late usage of an ended subscription; top_up, true_up: credits",
    )
    currency: str
    period_start: datetime
    period_end: datetime
    subtotal: int = Field(description="The charge lines, before discounts and credits, minor units")
    discount: int = Field(
        default=0, description="Discounts applied (the discount lines), minor units"
    )
    tax: int = Field(description="All tax, minor units, including tax_inclusive")
    tax_inclusive: int = Field(
        default=0, description="The part of tax already in inclusive prices, minor units"
    )
    total: int = Field(
        description="subtotal - discount - credits + tax - tax_inclusive, minor units"
    )
    credits: int = Field(
        default=0, description="Prepaid credits applied (the credit lines), minor units"
    )
    amount_paid: int
    amount_credited: int = Field(
        default=0, description="Credit notes that reduced what is due (not refunds), minor units"
    )
    amount_due: int = Field(description="total - amount_paid - amount_credited, at least 0")
    amount_refunded: int = Field(default=0, description="Refunds of its payments, minor units")
    tax_rate: DecimalStr | None = Field(
        default=None, description="The customer's bare tax_rate, when it has one"
    )
    tax_breakdown: list[TaxAmount] = Field(
        default_factory=list,
        description="Per rate: taxable amount, taxable base and tax (docs/taxes.md)",
    )
    tax_note: str | None = Field(
        default=None, description="Exempt or reverse charge: the legal note the invoice shows"
    )
    buyer: Buyer | None = Field(
        default=None, description="The customer as the invoice was finalized (tax report)"
    )
    due_at: datetime | None = None
    memo: str | None = Field(default=None, description="A one-off invoice's memo")
    receipt_id: str | None = Field(
        default=None,
        description="From finalization on: the id of the signed receipt that attests it "
        "(docs/receipts.md; issued moments later)",
    )
    pdf_url: str | None = Field(
        default=None,
        description="From finalization on: where its PDF is served (with the API key), "
        "rendered moments later (docs/documents.md)",
    )
    lines: list[InvoiceLine]


class InvoiceCreated(CloudEvent):
    type: Literal["invoice.created"] = "invoice.created"
    data: InvoiceData


class InvoiceFinalized(CloudEvent):
    type: Literal["invoice.finalized"] = "invoice.finalized"
    data: InvoiceData


class InvoicePaid(CloudEvent):
    type: Literal["invoice.paid"] = "invoice.paid"
    data: InvoiceData


class InvoicePaymentRecorded(CloudEvent):
    """A payment that does not (yet) cover the whole amount."""

    type: Literal["invoice.payment_recorded"] = "invoice.payment_recorded"
    data: InvoiceData


class InvoiceRefunded(CloudEvent):
    """A payment of the invoice was refunded (in part or in full)."""

    type: Literal["invoice.refunded"] = "invoice.refunded"
    data: InvoiceData


class InvoiceVoided(CloudEvent):
    type: Literal["invoice.voided"] = "invoice.voided"
    data: InvoiceData


class InvoiceMarkedUncollectible(CloudEvent):
    type: Literal["invoice.marked_uncollectible"] = "invoice.marked_uncollectible"
    data: InvoiceData


COMMANDS: tuple[type[CloudEvent], ...] = (
    UpsertCustomer,
    CreatePlan,
    CreateSubscription,
    CancelSubscription,
    ChangeSubscriptionPlan,
    RunBilling,
    VoidInvoice,
    MarkInvoiceUncollectible,
    ConfigureInvoicing,
    GrantCredits,
    VoidCreditGrant,
    ConfigureAutoTopUp,
    CreateCommitment,
    CreateCoupon,
    CreatePromotionCode,
    ApplyDiscount,
    RemoveDiscount,
    IssueCreditNote,
    VoidCreditNote,
    CreateInvoice,
    FinalizeInvoice,
    CreateTaxRate,
)
EVENTS: tuple[type[CloudEvent], ...] = (
    CustomerCreated,
    CustomerUpdated,
    PlanCreated,
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionEnded,
    SubscriptionTrialWillEnd,
    InvoiceCreated,
    InvoiceFinalized,
    InvoicePaid,
    InvoicePaymentRecorded,
    InvoiceRefunded,
    InvoiceVoided,
    InvoiceMarkedUncollectible,
    CreditGranted,
    CreditVoided,
    CreditApplied,
    CreditReversed,
    CreditExpired,
    CouponCreated,
    PromotionCodeCreated,
    DiscountApplied,
    DiscountRemoved,
    CreditNoteIssued,
    CreditNoteVoided,
    TaxRateCreated,
    TaxRateUpdated,
)

"""One-off invoices: an invoice of lines the caller gives, for a customer, outside any
subscription (the per-booking invoice of a travel platform, a one-off service fee). Commands
on ``billstream.commands.invoicing.v1``; the events are the invoice events every invoice has
(``invoice.created``, ``invoice.finalized``, ``invoice.paid``) with ``kind: "one_off"``.
docs/one-off-invoices.md has the rules and worked examples.

Quantities, unit prices and tax rates are exact decimals (JSON strings; a float is refused).
Each line's amount is ``quantity * unit_price`` rounded once to minor units of the
customer's currency with the tenant's rounding.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.bounds import (
    EXTERNAL_ID_PATTERN,
    ID_PATTERN,
    Currency,
    EventTime,
    Line,
    ShowBounds,
    Text,
)
from schemas.envelope import CloudEvent
from schemas.metering import METER_KEY_PATTERN
from schemas.pricing import NonNegDecimal, TaxRateNames

MAX_ONE_OFF_LINES = 250
INVOICE_ID_PATTERN = ID_PATTERN  # and at most 36 characters (the invoices' key)
MAX_INVOICE_ID = 36
MAX_IDEMPOTENCY_KEY = 255
# OpenAPI only (what the validator refuses, where JSON Schema can say it): 0 to 1
LineTaxRate = Annotated[
    NonNegDecimal, ShowBounds({"maximum": 1, "pattern": "^0*(1(\\.0+)?|0(\\.[0-9]+)?)$"})
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OneOffLine(_Model):
    """One line: ``quantity * unit_price``, rounded once to minor units."""

    description: Line = Field(min_length=1, max_length=256)
    quantity: NonNegDecimal = Field(description="More than 0 (at most 12 decimal places)")
    unit_price: NonNegDecimal = Field(
        description="Major units of the currency ('12.50'); 0 for a free line, never negative"
    )
    tax_rate: LineTaxRate | None = Field(
        default=None,
        description="The line's own tax rate, a fraction 0..1 ('0.08' is 8 %); omit for the "
        "customer's rate",
    )
    tax_rates: TaxRateNames | None = Field(
        default=None,
        description="The line's tax rates by name (docs/taxes.md), overriding the customer's; "
        "not with 'tax_rate'",
    )
    item: str | None = Field(
        default=None,
        pattern=METER_KEY_PATTERN,
        description="The key of what is sold (a slug, shown as the line's price_key); "
        "default 'one_off'",
    )
    period_start: EventTime | None = Field(
        default=None, description="What the line covers (a stay, a service); default: the invoice's"
    )
    period_end: EventTime | None = None

    @field_validator("quantity")
    @classmethod
    def _positive(cls, v: Decimal) -> Decimal:
        if v <= 0:
            raise ValueError("must be more than 0")
        return v

    @field_validator("tax_rate")
    @classmethod
    def _fraction(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v > 1:
            raise ValueError("must be a fraction between 0 and 1 ('0.19' is 19 %)")
        return v

    @model_validator(mode="after")
    def _period(self) -> OneOffLine:
        if self.tax_rate is not None and self.tax_rates is not None:
            raise ValueError("give 'tax_rate' or 'tax_rates', not both")
        if (self.period_start is None) != (self.period_end is None):
            raise ValueError("give both 'period_start' and 'period_end', or neither")
        if self.period_start and self.period_end and self.period_end < self.period_start:
            raise ValueError("'period_end' must not be before 'period_start'")
        return self


class OneOffInvoiceSpec(_Model):
    invoice_id: str = Field(
        pattern=INVOICE_ID_PATTERN,
        max_length=MAX_INVOICE_ID,
        description="Chosen by the ingress (from the idempotency key when there is one)",
    )
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    currency: Currency | None = Field(
        default=None, description="Must be the customer's currency (the default)"
    )
    idempotency_key: Line | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="Per tenant: the same key bills once (the same content gives the same "
        "invoice; other content is refused)",
    )
    lines: list[OneOffLine] = Field(min_length=1, max_length=MAX_ONE_OFF_LINES)
    memo: Text | None = Field(default=None, max_length=2048)
    finalize: bool = Field(
        default=False, description="Finalize at once (default: the invoice stays a draft)"
    )


class CreateInvoice(CloudEvent):
    """Create a one-off invoice (a draft, or finalized at once with ``finalize``)."""

    type: Literal["CreateInvoice"] = "CreateInvoice"
    data: OneOffInvoiceSpec


class FinalizeInvoiceSpec(_Model):
    invoice_id: str = Field(pattern=INVOICE_ID_PATTERN)


class FinalizeInvoice(CloudEvent):
    """Finalize a one-off draft: numbered, due after the customer's net terms, prepaid
    credits applied. (A subscription's drafts are finalized by billing runs.)"""

    type: Literal["FinalizeInvoice"] = "FinalizeInvoice"
    data: FinalizeInvoiceSpec


__all__ = [
    "MAX_ONE_OFF_LINES",
    "CreateInvoice",
    "FinalizeInvoice",
    "FinalizeInvoiceSpec",
    "OneOffInvoiceSpec",
    "OneOffLine",
]

"""Point-of-sale integration: receipts (``billstream.integrations.pos.v1``) and the
per-tenant mapping that turns them into usage events (``billstream.commands.pos.v1``).

Money follows the house rule: amounts are integer minor units of ``currency``; unit prices
are exact ``Decimal`` in major units. A POS format that sends decimals is converted by its
adapter (``workers/pos/adapters/``) with the currency's exponent, exactly or not at all.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas import bounds
from schemas.bounds import Currency, EventTime, Line, MinorUnits, Text, present, show_model_bounds
from schemas.envelope import CloudEvent
from schemas.usage import EVENT_TYPE_PATTERN

POS_SOURCE_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,31}$"
RECEIPT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-/#]{0,199}$"
MAX_LINES = 500
MAX_LOCATIONS = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PosLine(_Model):
    sku: Line = Field(min_length=1, max_length=128)
    description: Text | None = Field(default=None, max_length=512)
    quantity: Decimal = Field(gt=0, max_digits=18, decimal_places=6, description="Units sold")
    unit_price: Decimal = Field(
        max_digits=24, decimal_places=12, description="Exact, in major units, before tax"
    )
    tax: MinorUnits = Field(description="Minor units")
    total: MinorUnits = Field(description="Minor units, tax included; negative for a discount line")


class PosReceipt(_Model):
    """One receipt as every adapter normalises it. A refund carries positive amounts; its
    ``kind`` makes it count negatively."""

    receipt_id: str = Field(pattern=RECEIPT_ID_PATTERN, description="Unique per POS source")
    kind: Literal["sale", "refund"] = "sale"
    refund_of: str | None = Field(
        default=None, pattern=RECEIPT_ID_PATTERN, description="The sale a refund reverses"
    )
    location: Line = Field(min_length=1, max_length=128, description="Store, till or site id")
    time: EventTime = Field(description="When the sale happened (usage lands in that hour)")
    currency: Currency
    payment_method: Line = Field(min_length=1, max_length=64, description="card, cash, ...")
    lines: list[PosLine] = Field(min_length=1, max_length=MAX_LINES)
    tax: MinorUnits = Field(description="Minor units: the sum of the lines' tax")
    total: MinorUnits = Field(description="Minor units, tax included: the sum of the lines' totals")

    @model_validator(mode="after")
    def _sums(self) -> Self:
        lines_total = sum(line.total for line in self.lines)
        if self.total != lines_total:
            raise ValueError(
                f"total {self.total} is not the sum of the lines' totals {lines_total}"
            )
        lines_tax = sum(line.tax for line in self.lines)
        if self.tax != lines_tax:
            raise ValueError(f"tax {self.tax} is not the sum of the lines' tax {lines_tax}")
        if abs(self.total - self.tax) > bounds.MAX_MINOR_UNITS:
            raise ValueError(
                f"the net amount (total - tax) {self.total - self.tax} is out of range: at "
                f"most {bounds.MAX_MINOR_UNITS} minor units in magnitude"
            )
        if self.kind == "sale" and self.refund_of is not None:
            raise ValueError("refund_of is only for refunds")
        return self


class PosReceiptData(PosReceipt):
    source: str = Field(pattern=POS_SOURCE_PATTERN, description="The POS source format")


class PosReceiptRecorded(CloudEvent):
    """A POS receipt, accepted by the ingress. Its ``id`` is the receipt id and its
    ``source`` is ``billstream/pos/<source>``: the same receipt sent twice is applied once."""

    type: Literal["pos.receipt.recorded"] = "pos.receipt.recorded"
    subject: Line = Field(min_length=1, max_length=128, description="The receipt's location")
    data: PosReceiptData


# --- mapping (command) ---------------------------------------------------------------


# OpenAPI only (the published schemas keep what they said): what _usable checks of each
# location and subject: a location 1-128 characters, a subject 1-256
_LOCATIONS = bounds.ShowBounds(
    {"propertyNames": {"pattern": bounds.LINE_PATTERN, "minLength": 1, "maxLength": 128}}
)
_LocationSubject = Annotated[Line, bounds.ShowBounds({"minLength": 1, "maxLength": 256})]


class PosMappingSpec(_Model):
    """How one tenant's receipts of one POS source become usage events.

    Per receipt: a ``gross_sales_event_type`` event whose data carries ``amount`` (the
    total in minor units, negative for a refund), ``net_amount``, ``tax``, ``currency``,
    ``location``, ``payment_method``, ``receipt_id`` and ``kind``; and, for a sale (and a
    refund when ``count_refunds``), a ``transaction_event_type`` event with the same
    descriptive fields; ``emit_gross_sales`` / ``emit_transactions`` turn either off.
    Meters read them like any usage (``sum`` of ``$.amount`` grouped by ``location`` and
    ``currency``; ``count`` of transactions).
    """

    default_subject: Line | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The customer usage is attributed to when its location is not listed",
    )
    subjects_by_location: Annotated[dict[Line, _LocationSubject], _LOCATIONS] = Field(
        default_factory=dict,
        max_length=MAX_LOCATIONS,
        description="Location id to customer (subject)",
    )
    gross_sales_event_type: str = Field(
        default="pos.gross_sales", pattern=EVENT_TYPE_PATTERN, description="Its CloudEvents type"
    )
    transaction_event_type: str = Field(
        default="pos.transaction", pattern=EVENT_TYPE_PATTERN, description="Its CloudEvents type"
    )
    emit_gross_sales: bool = Field(default=True, description="Emit the gross-sales event")
    emit_transactions: bool = Field(default=True, description="Emit the transaction event")
    count_refunds: bool = Field(
        default=False, description="Whether a refund also emits a transaction event"
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # what _usable refuses, said in OpenAPI: a default subject, or at least one location
        either = [
            present("default_subject"),
            {
                "required": ["subjects_by_location"],
                "properties": {"subjects_by_location": {"minProperties": 1}},
            },
        ]
        # and at least one of the two events
        no_event = {
            "required": ["emit_gross_sales", "emit_transactions"],
            "properties": {
                "emit_gross_sales": {"const": False},
                "emit_transactions": {"const": False},
            },
        }
        keywords = {"anyOf": either, "not": no_event}
        return show_model_bounds(cls is PosMappingSpec, core_schema, handler, keywords)

    @model_validator(mode="after")
    def _usable(self) -> Self:
        if self.default_subject is None and not self.subjects_by_location:
            raise ValueError("give default_subject or subjects_by_location (or both)")
        if not (self.emit_gross_sales or self.emit_transactions):
            raise ValueError("emit_gross_sales or emit_transactions (or both)")
        for location, subject in self.subjects_by_location.items():
            if not 1 <= len(location) <= 128 or not 1 <= len(subject) <= 256:
                raise ValueError("subjects_by_location: locations 1-128 characters, subjects 1-256")
        return self


class PosMappingData(PosMappingSpec):
    source: str = Field(pattern=POS_SOURCE_PATTERN)


class SetPosMapping(CloudEvent):
    """Create or replace the mapping of one POS source. Later receipts use it."""

    type: Literal["SetPosMapping"] = "SetPosMapping"
    data: PosMappingData


PosCommand = SetPosMapping

COMMANDS: tuple[type[CloudEvent], ...] = (SetPosMapping,)
EVENTS: tuple[type[CloudEvent], ...] = (PosReceiptRecorded,)

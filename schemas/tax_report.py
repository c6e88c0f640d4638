"""The tax report (``GET /v1/tax/report``, ``billstream tax report``): one row per document
and tax rate of a period, and totals per currency, rate and tax status (docs/taxes.md).

Amounts are integers in minor units of the row's currency, each with a ``*_major`` twin: the
same amount as an exact decimal string in major units (``11900`` EUR is ``"119.00"``).
Credit notes and the reversal of a voided invoice are negative; the reversal of a voided
credit note is positive: the sum of a column over a period is what the period adds up to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.taxes import TaxStatus

DocumentType = Literal["invoice", "credit_note", "invoice_void", "credit_note_void"]

#: the longest period ``GET /v1/tax/report`` answers: a leap year and two days, so that any
#: calendar year fits whatever the UTC offsets its two ends are written with
MAX_PERIOD_DAYS = 368


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaxReportRow(_Model):
    """One document's share of one tax rate (a document with no rate: one row, rate empty)."""

    document_type: DocumentType = Field(
        description="invoice; credit_note; invoice_void: the reversal of an invoice voided "
        "after it was finalized, dated when it was voided; credit_note_void: the same for a "
        "credit note"
    )
    number: str = Field(description="The invoice's or credit note's number")
    date: datetime = Field(
        description="invoice: finalized_at; credit_note: issued_at; invoice_void: when the "
        "invoice was voided; credit_note_void: voided_at"
    )
    status: str = Field(description="The document's status now (an invoice's or a note's)")
    invoice_number: str | None = Field(description="A credit note's: the invoice it credits")
    currency: str
    buyer_name: str | None = Field(description="The customer as the invoice was finalized")
    buyer_tax_id: str | None = Field(
        description="Every tax ID of the buyer, 'type:value', joined by '; '"
    )
    buyer_country: str | None = Field(description="The buyer's billing address country")
    tax_status: TaxStatus = Field(
        description="taxable, exempt or reverse_charge (the tax is 0): the rate's on this "
        "document, else the buyer's"
    )
    rate_name: str | None = Field(description="The rate's name ('tax': a bare tax_rate)")
    rate_display_name: str | None
    tax_rate_id: str | None = Field(description="The rate version; empty for a bare tax_rate")
    percentage: str | None = Field(description="'12' is 12 %")
    inclusive: bool | None = Field(description="Prices included this tax")
    taxable_base_factor: str | None = Field(description="'11/12' for PPN's DPP; '1' for most")
    rate_country: str | None
    rate_jurisdiction: str | None
    taxable_amount: int = Field(
        description="The net amount the rate applies to (a document with no rate: its net)"
    )
    taxable_amount_major: str
    taxable_base: int = Field(description="taxable_amount x taxable_base_factor, rounded once")
    taxable_base_major: str
    tax: int
    tax_major: str


class TaxReportTotal(_Model):
    """The rows of one currency, rate and tax status added up."""

    currency: str
    rate_key: str | None = Field(
        description="tax_rate_id, or 'name:percentage' for a bare tax_rate; empty: no rate"
    )
    rate_name: str | None
    rate_display_name: str | None
    tax_rate_id: str | None
    percentage: str | None
    tax_status: TaxStatus
    rows: int = Field(description="How many rows it adds up")
    taxable_amount: int
    taxable_amount_major: str
    taxable_base: int
    taxable_base_major: str
    tax: int
    tax_major: str


class TaxReport(_Model):
    """``format=json``: the period, its rows (by date) and their totals."""

    from_: datetime = Field(alias="from", description="Inclusive")
    to: datetime = Field(description="Exclusive")
    rows: list[TaxReportRow]
    totals: list[TaxReportTotal] = Field(
        description="Per currency, rate and tax status, sorted by currency and rate_key"
    )

"""Credit notes against finalized invoices: their commands (on
``billstream.commands.invoicing.v1``) and events (``credit_note.*`` on
``billstream.events.invoicing.v1``). docs/credit-notes.md has the rules and a worked example.

A note takes money off an invoice that stands (the invoice itself never changes but its
``amount_credited``): first what is still due, then prepaid credits return to their grants,
then the rest is refunded (``settle: refund``) or granted to the customer's balance
(``settle: credit``). Money is integer minor units of the invoice's currency.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.bounds import ID_PATTERN, Text
from schemas.credits import CreditAmount
from schemas.decimals import DecimalStr
from schemas.envelope import CloudEvent
from schemas.taxes import TaxAmount

MAX_NOTE_LINES = 100  # positions of invoice lines one note may credit

CreditReason = Literal["duplicate", "fraudulent", "order_change", "product_unsatisfactory", "other"]
Settle = Literal["refund", "credit"]
CreditNoteStatus = Literal["issued", "void"]

NoteAmount = CreditAmount  # an integer of minor units, 0 < amount <= 10**15


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CreditNoteLineSpec(_Model):
    line: int = Field(ge=0, le=100_000, description="The position of the invoice line")
    amount: NoteAmount = Field(
        description="Minor units taken off the line as the line shows it: excluding tax, or "
        "tax included for a line whose rates are inclusive"
    )


class CreditNoteSpec(_Model):
    id: str = Field(pattern=ID_PATTERN, description="Chosen by the caller (or the ingress)")
    invoice_id: str = Field(pattern=ID_PATTERN)
    reason: CreditReason
    memo: Text | None = Field(default=None, max_length=1024)
    lines: list[CreditNoteLineSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NOTE_LINES,
        description="Per invoice line: each rate's tax of the line is reversed in proportion "
        "(exactly the rest by the note that credits the rest of the line)",
    )
    amount: NoteAmount | None = Field(
        default=None,
        description="The whole note, tax included; each rate of the invoice's tax breakdown "
        "is reversed in proportion to the part of the invoice it credits (before taxes: "
        "tax = amount * rate / (1 + rate) at the invoice's rate), rounded once",
    )
    settle: Settle = Field(
        default="refund",
        description="What happens to the part already paid: refunded (refund) or granted to "
        "the customer's credit balance (credit)",
    )

    @model_validator(mode="after")
    def _lines_or_amount(self) -> CreditNoteSpec:
        if (self.lines is None) == (self.amount is None):
            raise ValueError("give either 'lines' or 'amount', not both and not neither")
        if self.lines is not None:
            positions = [ln.line for ln in self.lines]
            if len(set(positions)) != len(positions):
                raise ValueError("lines: each invoice line at most once")
        return self


class IssueCreditNote(CloudEvent):
    """Issue a credit note against a finalized, paid or uncollectible invoice."""

    type: Literal["IssueCreditNote"] = "IssueCreditNote"
    data: CreditNoteSpec


class VoidCreditNoteSpec(_Model):
    credit_note_id: str = Field(pattern=ID_PATTERN)
    reason: Text | None = Field(default=None, max_length=1024)


class VoidCreditNote(CloudEvent):
    """Void a credit note that refunded nothing and returned no prepaid credits; what it took
    off the amount due is due again, a balance it granted (if unused) is voided."""

    type: Literal["VoidCreditNote"] = "VoidCreditNote"
    data: VoidCreditNoteSpec


# --- events ----------------------------------------------------------------------------


class CreditNoteLine(_Model):
    line: int | None = Field(
        default=None, description="The invoice line's position; None for an amount note"
    )
    description: str
    amount: int = Field(description="Minor units, excluding tax")
    tax_rate: DecimalStr | None = Field(
        default=None, description="The rate as a fraction when the line has one taxable rate"
    )
    tax: int = Field(description="The tax credited with this line, minor units")
    taxes: list[TaxAmount] = Field(
        default_factory=list, description="Per rate, the taxable amount, base and tax credited"
    )
    line_amount: int | None = Field(
        default=None,
        description="What it took off its invoice line: amount, plus tax for a line whose "
        "rates are inclusive; None for an amount note",
    )


class CreditNoteData(_Model):
    credit_note_id: str
    number: str = Field(description="Gapless per tenant and year: CN-2026-000001")
    invoice_id: str
    invoice_number: str | None = None
    customer: str = Field(description="The customer's external_id")
    currency: str
    reason: CreditReason
    memo: str | None = None
    status: CreditNoteStatus
    settle: Settle
    lines: list[CreditNoteLine]
    subtotal: int = Field(description="Σ lines, minor units, excluding tax")
    tax: int
    tax_breakdown: list[TaxAmount] = Field(
        default_factory=list,
        description="Per rate, the taxable amount, base and tax credited (positive)",
    )
    total: int = Field(description="subtotal + tax")
    amount_reducing_due: int = Field(description="The part that reduced the amount due")
    amount_credits_returned: int = Field(
        description="The part returned to the prepaid credit grants that paid the invoice"
    )
    refund_amount: int = Field(description="The part refunded through payments")
    amount_credited_to_balance: int = Field(
        description="The part granted to the customer's credit balance (settle credit)"
    )
    grant_id: str | None = Field(default=None, description="That grant (settle credit)")
    invoice_amount_due: int = Field(description="The invoice's amount due after this event")
    issued_at: datetime
    voided_at: datetime | None = None
    void_reason: str | None = None
    receipt_id: str | None = Field(
        default=None,
        description="The id of the signed receipt that attests it (docs/receipts.md)",
    )


class CreditNoteIssued(CloudEvent):
    type: Literal["credit_note.issued"] = "credit_note.issued"
    data: CreditNoteData


class CreditNoteVoided(CloudEvent):
    type: Literal["credit_note.voided"] = "credit_note.voided"
    data: CreditNoteData

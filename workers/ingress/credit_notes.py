"""Credit notes API: issue one against an invoice, void one, read them.

Writes become commands on ``billstream.commands.invoicing.v1`` (202 + command id), keyed
``tenant:customer``. The door refuses at once what it can check: an unknown invoice or note
(404); both ``lines`` and ``amount``, or neither, a line position twice, more than 100
lines, a float or a string where money goes (422, naming the field). What needs the
invoice's state (more than remains creditable, a draft or void invoice) fails the command.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import EXTERNAL_ID_PATTERN, ID_PATTERN, present, show_model_bounds
from schemas.credit_notes import (
    MAX_NOTE_LINES,
    CreditNoteData,
    CreditNoteLineSpec,
    CreditNoteSpec,
    CreditReason,
    IssueCreditNote,
    NoteAmount,
    Settle,
    VoidCreditNote,
    VoidCreditNoteSpec,
)
from schemas.envelope import new_id
from schemas.topics import partition_key
from storage.invoicing import InvoicingRepository
from workers import invoicing
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Text
from workers.ingress.invoicing import send
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import CommandAccepted

router = APIRouter(prefix="/v1", tags=["credit notes"])

IdPath = Annotated[str, Path(pattern=ID_PATTERN)]
_PENDING_HINT = " (if its command is still pending, retry when it has succeeded)"
_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreditNoteIn(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    reason: CreditReason
    memo: Text | None = Field(default=None, max_length=1024)
    lines: list[CreditNoteLineSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NOTE_LINES,
        description="Per invoice line (its position), minor units taken off the line: "
        "excluding tax, or tax included for a line whose rates are inclusive; each rate's "
        "tax is reversed in proportion. Give lines or amount.",
    )
    amount: NoteAmount | None = Field(
        default=None,
        description="The whole note, tax included, minor units; each rate of the invoice's "
        "tax breakdown is reversed in proportion (before taxes: tax = amount * rate / "
        "(1 + rate)). Give lines or amount.",
    )
    settle: Settle = Field(
        default="refund",
        description="The part already paid: refund (through payments) or credit (a grant "
        "to the customer's credit balance)",
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        either = {"oneOf": [present("lines"), present("amount")]}  # what the route refuses
        return show_model_bounds(cls is CreditNoteIn, core_schema, handler, either)


def _refuse(field: str, message: str) -> None:
    raise invalid(f"{field}: {message}", [{"field": field, "reason": message}])


@router.post(
    "/invoices/{invoice_id}/credit-notes",
    summary="Issue a credit note against a finalized invoice (command)",
    **_ACCEPTED,
)
async def issue_credit_note(
    request: Request,
    invoice_id: IdPath,
    body: CreditNoteIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Answers with the ``credit_note_id`` at once; the command's result has its number and
    how it settled (amount_reducing_due, amount_credits_returned, refund_amount,
    amount_credited_to_balance). The same id again is a no-op."""
    if (body.lines is None) == (body.amount is None):
        _refuse("lines", "give either 'lines' or 'amount' (not both, not neither)")
    if body.lines is not None:
        seen: set[int] = set()
        for i, ln in enumerate(body.lines):
            if ln.line in seen:
                _refuse(f"lines[{i}].line", f"invoice line {ln.line} is credited twice")
            seen.add(ln.line)
    repo = tx.repo(InvoicingRepository)
    invoice = await repo.invoice(tenant_id, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id)
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    fields = body.model_dump(exclude_unset=True, exclude={"id"})
    spec = CreditNoteSpec(**fields, id=body.id or f"cn_{new_id()}", invoice_id=invoice_id)
    return await send(
        request,
        st,
        tenant_id,
        IssueCreditNote,
        spec,
        partition_key(tenant_id, customer.external_id),
        spec.id,
        {"credit_note_id": spec.id},
    )


class VoidIn(_In):
    reason: Text | None = Field(default=None, max_length=1024)


async def _note(tx: Any, tenant_id: str, id: str) -> CreditNoteData:
    found = await invoicing.find_credit_notes(tx, tenant_id, id=id)
    if not found:
        raise not_found("credit note", id, _PENDING_HINT)
    return found[0]


@router.post(
    "/credit-notes/{credit_note_id}/void", summary="Void a credit note (command)", **_ACCEPTED
)
async def void_credit_note(
    request: Request,
    credit_note_id: IdPath,
    body: VoidIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Fails its command for a note that refunded money or returned prepaid credits, one
    that settled its invoice (paid), or one whose balance credit was used. Its number stays."""
    note = await _note(tx, tenant_id, credit_note_id)
    spec = VoidCreditNoteSpec(credit_note_id=credit_note_id, reason=body.reason)
    return await send(
        request,
        st,
        tenant_id,
        VoidCreditNote,
        spec,
        partition_key(tenant_id, note.customer),
        credit_note_id,
    )


@router.get(
    "/credit-notes/{credit_note_id}", response_model=CreditNoteData, summary="One credit note"
)
async def get_credit_note(credit_note_id: IdPath, tx: Unit, tenant_id: Tenant) -> CreditNoteData:
    return await _note(tx, tenant_id, credit_note_id)


@router.get(
    "/credit-notes",
    response_model=list[CreditNoteData],
    summary="Credit notes, newest first: of an invoice, of a customer, or all",
)
async def list_credit_notes(
    tx: Unit,
    tenant_id: Tenant,
    invoice: str | None = Query(None, pattern=ID_PATTERN, description="An invoice id"),
    customer: str | None = Query(
        None, pattern=EXTERNAL_ID_PATTERN, description="A customer's external_id"
    ),
    limit: int = Query(100, ge=1, le=200),
) -> list[CreditNoteData]:
    return await invoicing.find_credit_notes(
        tx, tenant_id, invoice_id=invoice, customer=customer, limit=limit
    )

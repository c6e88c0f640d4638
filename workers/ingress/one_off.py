"""One-off invoices API: create one (``POST /v1/invoices``) and finalize a draft
(``POST /v1/invoices/{id}/finalize``). Both are commands on
``billstream.commands.invoicing.v1`` (202 + command id), keyed ``tenant:customer``; the
invoice is read with ``GET /v1/invoices/{id}`` like any other.

The door refuses at once what it can check: an unknown customer or invoice (404), another
currency than the customer's, a float, a quantity of 0, a negative price, a tax rate above
1, no lines or too many (422, naming the field).

Idempotency (docs/one-off-invoices.md): the invoice's key is the body's
``idempotency_key``, else the ``Idempotency-Key`` header. With a key the invoice id is
derived from the tenant and the key, so every retry names the same invoice; the header
also replays the first answer (``deps.idempotent``), and the command compares the content
with the invoice the key made (the same: that invoice; other: a conflict).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.bounds import EXTERNAL_ID_PATTERN, ID_PATTERN, Line, Text
from schemas.envelope import new_id
from schemas.one_off import (
    MAX_IDEMPOTENCY_KEY,
    MAX_ONE_OFF_LINES,
    CreateInvoice,
    FinalizeInvoice,
    FinalizeInvoiceSpec,
    OneOffInvoiceSpec,
    OneOffLine,
)
from schemas.topics import partition_key
from storage.invoicing import InvoicingRepository
from storage.invoicing.credits import CreditRepository
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.invoicing import send
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import CommandAccepted

router = APIRouter(prefix="/v1", tags=["invoicing"])

InvoiceIdPath = Annotated[str, Path(pattern=ID_PATTERN)]
_PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"
_KEYED = uuid.UUID("6f1d6c1e-3a55-4c53-9d1b-0d9a3c0f7e11")  # the namespace of keyed ids


class InvoiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    currency: str | None = Field(
        default=None, description="Must be the customer's currency (the default)"
    )
    idempotency_key: Line | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="Default: the Idempotency-Key header. The same key bills once",
    )
    lines: list[OneOffLine] = Field(min_length=1, max_length=MAX_ONE_OFF_LINES)
    memo: Text | None = Field(default=None, max_length=2048)
    finalize: bool = Field(default=False, description="Finalize at once (default: a draft)")


class InvoiceAccepted(CommandAccepted):
    invoice_id: str


def _refuse(field: str, message: str) -> None:
    raise invalid(f"{field}: {message}", [{"field": field, "reason": message}])


def invoice_id_for(tenant_id: str, key: str | None) -> str:
    """The invoice id of a request: derived from the tenant and the idempotency key (every
    retry names the same invoice), else a fresh one."""
    return str(uuid.uuid5(_KEYED, f"{tenant_id}\n{key}")) if key is not None else new_id()


@router.post(
    "/invoices",
    status_code=202,
    response_model=InvoiceAccepted,
    summary="Create a one-off invoice (command)",
)
async def create_invoice(
    request: Request, body: InvoiceIn, st: State, tx: Unit, tenant_id: Tenant
) -> Response:
    """An invoice of the given lines outside any subscription: a draft (finalize it with
    ``POST /v1/invoices/{id}/finalize``) or, with ``finalize: true``, finalized at once.
    Each line is ``quantity * unit_price`` rounded once to minor units; tax once per rate
    (a line's own ``tax_rate``, else the customer's)."""
    customer = await tx.repo(CreditRepository).find_customer(tenant_id, body.customer)
    if customer is None:
        raise not_found("customer", body.customer, _PENDING_HINT)
    currency = body.currency or customer.currency
    if currency != customer.currency:
        _refuse("currency", f"the customer pays in {customer.currency}")
    if customer.tax_exempt:
        for i, ln in enumerate(body.lines):
            if ln.tax_rate:
                _refuse(f"lines[{i}].tax_rate", "the customer is tax exempt")
    key = body.idempotency_key or request.headers.get("idempotency-key")
    try:
        spec = OneOffInvoiceSpec(
            **body.model_dump(exclude={"idempotency_key", "currency", "lines"}),
            lines=body.lines,
            currency=currency,
            idempotency_key=key,
            invoice_id=invoice_id_for(tenant_id, key),
        )
    except ValidationError as e:  # a header the key cannot be (a control character)
        _refuse("idempotency_key", e.errors()[0]["msg"])
        raise  # unreachable
    key = partition_key(tenant_id, body.customer)
    extra = {"invoice_id": spec.invoice_id}
    return await send(request, st, tenant_id, CreateInvoice, spec, key, spec.invoice_id, extra)


@router.post(
    "/invoices/{invoice_id}/finalize",
    status_code=202,
    response_model=InvoiceAccepted,
    summary="Finalize a one-off draft (command)",
)
async def finalize_invoice(
    request: Request, invoice_id: InvoiceIdPath, st: State, tx: Unit, tenant_id: Tenant
) -> Response:
    """Numbers the draft (the tenant's gapless sequence), sets its due date (the customer's
    net terms), applies prepaid credits; ``invoice.finalized`` follows and payments collects
    it. A subscription's draft is refused (billing runs finalize it)."""
    repo = tx.repo(InvoicingRepository)
    invoice = await repo.invoice(tenant_id, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id, _PENDING_HINT)
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    data = FinalizeInvoiceSpec(invoice_id=invoice_id)
    key = partition_key(tenant_id, customer.external_id)
    extra = {"invoice_id": invoice_id}
    return await send(request, st, tenant_id, FinalizeInvoice, data, key, invoice_id, extra)

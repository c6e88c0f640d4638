"""Invoicing API: customers, plans, subscriptions, billing runs and invoices.

Writes become commands on ``billstream.commands.invoicing.v1`` (202 + command id), keyed
``tenant:customer`` so one customer's commands stay in order; reads come from PostgreSQL.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from schemas import topics
from schemas.bounds import ID_PATTERN
from schemas.envelope import new_id
from schemas.invoicing import (
    BillingRunSpec,
    ConfigureInvoicing,
    CreatePlan,
    CustomerSpec,
    InvoiceActionSpec,
    InvoiceData,
    InvoiceStatus,
    InvoicingConfig,
    MarkInvoiceUncollectible,
    RunBilling,
    UpsertCustomer,
    VoidInvoice,
)
from schemas.pricing import PlanSpec
from schemas.topics import partition_key
from storage.invoicing import InvoicingRepository
from storage.invoicing.hierarchy import HierarchyRepository
from workers import documents, invoicing
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant, Text
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import MAX_SUBTREE, CommandAccepted, send_command, subtree_of
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import Customer, Invoice, InvoiceLineRow

router = APIRouter(prefix="/v1", tags=["invoicing"])


SubscriptionIdPath = Annotated[str, Path(pattern=ID_PATTERN)]
InvoiceIdPath = Annotated[str, Path(pattern=ID_PATTERN)]

_PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"


send = functools.partial(send_command, topic=topics.COMMANDS_INVOICING)
"""``send_command`` on billstream.commands.invoicing.v1."""


_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


# --- customers ---------------------------------------------------------------------


class CustomerView(CustomerSpec):
    id: str
    created_at: datetime
    updated_at: datetime


def _customer_view(c: Customer) -> CustomerView:
    return CustomerView.model_validate({k: getattr(c, k) for k in CustomerView.model_fields})


@router.post("/customers", summary="Create or update a customer (command)", **_ACCEPTED)
async def upsert_customer(
    request: Request, spec: CustomerSpec, st: State, tenant_id: Tenant
) -> Response:
    """The customer is identified by ``external_id`` (the ``subject`` of its usage events).
    Changing the currency of a customer with live subscriptions fails."""
    key = partition_key(tenant_id, spec.external_id)
    return await send(request, st, tenant_id, UpsertCustomer, spec, key, spec.external_id)


@router.get("/customers", response_model=list[CustomerView], summary="List customers")
async def list_customers(
    tx: Unit,
    tenant_id: Tenant,
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(None, description="external_id to continue after"),
) -> list[CustomerView]:
    rows = await tx.repo(InvoicingRepository).list_customers(tenant_id, limit, after)
    return [_customer_view(c) for c in rows]


async def _customer(tx: Tx, tenant_id: str, external_id: str) -> Customer:
    c = await tx.repo(InvoicingRepository).customer(tenant_id, external_id, lock=False)
    if c is None:
        raise not_found("customer", external_id)
    return c


@router.get("/customers/{external_id}", response_model=CustomerView, summary="One customer")
async def get_customer(external_id: str, tx: Unit, tenant_id: Tenant) -> CustomerView:
    return _customer_view(await _customer(tx, tenant_id, external_id))


# --- hierarchies (docs/hierarchies.md) ---------------------------------------------------


class DescendantView(BaseModel):
    external_id: str
    name: str
    parent: str | None = Field(description="Its parent's external_id")
    invoice_to: Literal["self", "parent"]
    currency: str
    depth: int = Field(description="Levels below the customer asked about: its children are 1")


@router.get(
    "/customers/{external_id}/descendants",
    response_model=list[DescendantView],
    summary="The customers below a customer",
)
async def list_descendants(
    external_id: str,
    tx: Unit,
    tenant_id: Tenant,
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(
        None, description="external_id of the last customer of the previous page"
    ),
) -> list[DescendantView]:
    """Every customer below it (children, their children, …; not itself), whatever their
    ``invoice_to``: by depth, then external_id."""
    await _customer(tx, tenant_id, external_id)
    rows = await tx.repo(HierarchyRepository).descendants(
        tenant_id, external_id, depth=invoicing.MAX_DEPTH, limit=limit, after=after
    )
    return [DescendantView.model_validate(r._asdict()) for r in rows]


# --- plans -------------------------------------------------------------------------


class PlanView(PlanSpec):
    id: str


@router.post("/plans", summary="Define a plan (command)", **_ACCEPTED)
async def create_plan(request: Request, spec: PlanSpec, st: State, tenant_id: Tenant) -> Response:
    """Plans are immutable: re-sending the identical plan succeeds, another definition under
    the same key fails. Every metered price's meter must exist."""
    return await send(request, st, tenant_id, CreatePlan, spec, tenant_id, spec.key)


@router.get("/plans", response_model=list[PlanView], summary="List plans")
async def list_plans(tx: Unit, tenant_id: Tenant) -> list[PlanView]:
    return [
        PlanView.model_validate(p.spec | {"id": p.id})
        for p in await tx.repo(InvoicingRepository).list_plans(tenant_id)
    ]


@router.get("/plans/{key}", response_model=PlanView, summary="One plan")
async def get_plan(key: str, tx: Unit, tenant_id: Tenant) -> PlanView:
    p = await tx.repo(InvoicingRepository).plan(tenant_id, key)
    if p is None:
        raise not_found("plan", key)
    return PlanView.model_validate(p.spec | {"id": p.id})


# --- billing runs ------------------------------------------------------------------


class BillingRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=ID_PATTERN)
    as_of: Instant | None = Field(default=None, description="Default: now")


class BillingRunView(BaseModel):
    id: str
    as_of: datetime
    status: Literal["pending", "completed", "failed"]
    error: str | None = Field(
        default=None,
        description="Why a failed run failed (it is quarantined: docs/operations.md)",
    )
    invoices_created: int
    invoices_finalized: int
    drafts_waiting: int = Field(
        description="Drafts past their grace period still waiting for metering to catch up"
    )
    requested_at: datetime
    completed_at: datetime | None


@router.post("/billing-runs", summary="Run billing as of a time (command)", **_ACCEPTED)
async def run_billing(
    request: Request, body: BillingRunIn, st: State, tenant_id: Tenant
) -> Response:
    """Bills this tenant's periods that ended by ``as_of`` and finalizes its drafts that are
    due by then. Follow ``billing_run_url`` for progress."""
    spec = BillingRunSpec(id=body.id or f"run_{new_id()}", as_of=body.as_of or datetime.now(UTC))
    return await send(
        request,
        st,
        tenant_id,
        RunBilling,
        spec,
        tenant_id,
        spec.id,
        extra={"billing_run_id": spec.id, "billing_run_url": f"/v1/billing-runs/{spec.id}"},
    )


@router.get("/billing-runs/{run_id}", response_model=BillingRunView, summary="A billing run")
async def get_billing_run(run_id: str, tx: Unit, tenant_id: Tenant) -> BillingRunView:
    run = await tx.repo(InvoicingRepository).run(tenant_id, run_id)
    if run is None:
        raise not_found("billing run", run_id, _PENDING_HINT)
    return BillingRunView.model_validate(run, from_attributes=True)


# --- invoices ----------------------------------------------------------------------


class PaymentView(BaseModel):
    payment_id: str
    amount: int
    currency: str
    method: str
    received_at: datetime


class InvoiceSection(BaseModel):
    customer: str = Field(description="The customer's external_id")
    name: str
    subtotal: int = Field(description="Its charge lines (not discounts or credits), minor units")


class InvoiceView(InvoiceData):
    created_at: datetime
    finalized_at: datetime | None
    paid_at: datetime | None
    closed_at: datetime | None
    status_reason: str | None
    payments: list[PaymentView]
    sections: list[InvoiceSection] = Field(
        default_factory=list,
        description="A consolidated invoice's parts (docs/hierarchies.md): the customer "
        "invoiced first, then each customer whose usage it bills, in the order of their lines "
        "(the lines' subject); the subtotals add up to subtotal. Empty when every line is the "
        "invoice's own customer's",
    )


async def _sections(tx: Tx, tenant_id: str, data: InvoiceData) -> list[InvoiceSection]:
    customers = documents.section_customers(data)
    if not customers:
        return []
    rows = await tx.repo(HierarchyRepository).customers(tenant_id, customers)
    names = {e: c.name for e, c in rows.items()}
    return [
        InvoiceSection(customer=s.customer, name=s.name, subtotal=s.subtotal)
        for s in documents.sections(data, names)
    ]


async def _invoice_view(
    tx: Tx,
    invoice: Invoice,
    *,
    payments: bool,
    known: tuple[dict[str, Customer], dict[str, list[InvoiceLineRow]]] | None = None,
) -> InvoiceView:
    """``known``: the invoice's customer and lines already read (a list reads them for
    every invoice in one query each)."""
    repo = tx.repo(InvoicingRepository)
    if known is None:
        known = (await repo.customers([invoice.customer_id]), await repo.lines([invoice.id]))
    customer, lines = known[0][invoice.customer_id], known[1][invoice.id]
    data = invoicing.invoice_data(invoice, customer.external_id, lines)
    paid = await repo.payments(invoice.tenant_id, invoice.id) if payments else []
    # ``data`` is a valid InvoiceData and the rest are the row's typed columns: built
    # without validating the invoice and its lines a second time (a list shows 100)
    return InvoiceView.model_construct(
        **dict(data),
        sections=await _sections(tx, invoice.tenant_id, data),
        created_at=invoice.created_at,
        finalized_at=invoice.finalized_at,
        paid_at=invoice.paid_at,
        closed_at=invoice.closed_at,
        status_reason=invoice.status_reason,
        payments=[PaymentView.model_validate(p, from_attributes=True) for p in paid],
    )


@router.get("/invoices", response_model=list[InvoiceView], summary="List invoices")
async def list_invoices(
    tx: Unit,
    tenant_id: Tenant,
    customer: str | None = Query(None, description="A customer's external_id"),
    subtree: bool = Query(
        False,
        description="With customer: the invoices of the customer and of every customer below "
        f"it (at most {MAX_SUBTREE:,} customers)",
    ),
    subscription_id: str | None = None,
    status: InvoiceStatus | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[InvoiceView]:
    """Latest period first."""
    customer_id: str | None = None
    customer_ids: list[str] | None = None
    if subtree:
        if not customer:
            raise invalid(
                "subtree needs a customer",
                [{"field": "customer", "reason": "required with subtree=true"}],
            )
        members = await tx.repo(HierarchyRepository).customers(
            tenant_id, await subtree_of(tx, tenant_id, customer, "subtree")
        )
        customer_ids = sorted(c.id for c in members.values())
    elif customer:
        customer_id = (await _customer(tx, tenant_id, customer)).id
    rows = await tx.repo(InvoicingRepository).list_invoices(
        tenant_id,
        customer_id=customer_id,
        subscription_id=subscription_id,
        status=status,
        limit=limit,
        customer_ids=customer_ids,
    )
    repo = tx.repo(InvoicingRepository)
    known = (
        await repo.customers({i.customer_id for i in rows}),
        await repo.lines([i.id for i in rows]),
    )
    return [await _invoice_view(tx, i, payments=False, known=known) for i in rows]


async def _invoice(tx: Tx, tenant_id: str, invoice_id: str) -> Invoice:
    invoice = await tx.repo(InvoicingRepository).invoice(tenant_id, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id)
    return invoice


@router.get("/invoices/{invoice_id}", response_model=InvoiceView, summary="One invoice")
async def get_invoice(invoice_id: str, tx: Unit, tenant_id: Tenant) -> InvoiceView:
    """Each line names the meter, subject and period it was computed from and the value
    (``quantity``) it read; adjustment lines name the earlier period they correct."""
    return await _invoice_view(tx, await _invoice(tx, tenant_id, invoice_id), payments=True)


class InvoiceActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text | None = Field(default=None, max_length=1024)


async def _invoice_action(
    request: Request,
    st: State,
    tx: Tx,
    tenant_id: str,
    invoice_id: str,
    body: InvoiceActionIn,
    command: type[VoidInvoice] | type[MarkInvoiceUncollectible],
) -> Response:
    invoice = await _invoice(tx, tenant_id, invoice_id)
    customer = (await tx.repo(InvoicingRepository).customers([invoice.customer_id]))[
        invoice.customer_id
    ]
    spec = InvoiceActionSpec(invoice_id=invoice_id, reason=body.reason)
    key = partition_key(tenant_id, customer.external_id)
    return await send(request, st, tenant_id, command, spec, key, invoice_id)


@router.post("/invoices/{invoice_id}/void", summary="Void an invoice (command)", **_ACCEPTED)
async def void_invoice(
    request: Request,
    invoice_id: InvoiceIdPath,
    body: InvoiceActionIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    return await _invoice_action(request, st, tx, tenant_id, invoice_id, body, VoidInvoice)


@router.post(
    "/invoices/{invoice_id}/mark-uncollectible",
    summary="Mark an invoice uncollectible (command)",
    **_ACCEPTED,
)
async def mark_uncollectible(
    request: Request,
    invoice_id: InvoiceIdPath,
    body: InvoiceActionIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    return await _invoice_action(
        request, st, tx, tenant_id, invoice_id, body, MarkInvoiceUncollectible
    )


# --- configuration ---------------------------------------------------------------


@router.put(
    "/invoicing/config", summary="Rounding, grace period, number prefix (command)", **_ACCEPTED
)
async def configure(
    request: Request, config: InvoicingConfig, st: State, tenant_id: Tenant
) -> Response:
    return await send(request, st, tenant_id, ConfigureInvoicing, config, tenant_id, tenant_id)


@router.get("/invoicing/config", response_model=InvoicingConfig, summary="Invoicing settings")
async def get_config(tx: Unit, tenant_id: Tenant) -> InvoicingConfig:
    return invoicing.config_of(await tx.repo(InvoicingRepository).config(tenant_id))

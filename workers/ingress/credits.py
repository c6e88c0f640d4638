"""Credits API: grants, top-ups, voids, automatic top-ups, balances and the ledger.

Writes become commands on ``billstream.commands.invoicing.v1`` (202 + command id), keyed
``tenant:customer``; reads come from PostgreSQL. The door refuses at once what it can
check: an unknown customer (404), a grant in another currency than the customer's, an
expiry not after the grant takes effect, a float where money goes (422, naming the field).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from schemas.bounds import EXTERNAL_ID_PATTERN, ID_PATTERN
from schemas.credits import (
    AutoTopUpSpec,
    CommitmentSpec,
    ConfigureAutoTopUp,
    CreateCommitment,
    CreditAmount,
    CreditGrantData,
    CreditGrantSpec,
    CreditScope,
    CreditSource,
    EntryKind,
    GrantCredits,
    Rollover,
    ThresholdAmount,
    VoidCreditGrant,
    VoidCreditGrantSpec,
)
from schemas.envelope import new_id
from schemas.topics import partition_key
from storage.invoicing.credits import CreditRepository
from workers import invoicing
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant, Text
from workers.ingress.invoicing import send
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import CommandAccepted
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import Customer

router = APIRouter(prefix="/v1", tags=["credits"])

CustomerPath = Annotated[str, Path(pattern=EXTERNAL_ID_PATTERN)]
GrantIdPath = Annotated[str, Path(pattern=ID_PATTERN)]
_PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"
_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


async def _customer(tx: Tx, tenant_id: str, external_id: str) -> Customer:
    c = await tx.repo(CreditRepository).find_customer(tenant_id, external_id)
    if c is None:
        raise not_found("customer", external_id, _PENDING_HINT)
    return c


def _refuse(field: str, message: str) -> None:
    raise invalid(f"{field}: {message}", [{"field": field, "reason": message}])


# --- grants and top-ups --------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrantIn(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    amount: CreditAmount = Field(description="Minor units of the customer's currency")
    currency: str | None = Field(
        default=None, description="Must be the customer's currency (the default)"
    )
    source: CreditSource = "promotional"
    priority: int = Field(default=50, ge=0, le=100, description="0 is applied first")
    effective_at: Instant | None = Field(default=None, description="Default: now")
    expires_at: Instant | None = Field(default=None, description="Default: never")
    scope: CreditScope | None = None
    rollover: Rollover | None = None
    description: Text | None = Field(default=None, max_length=256)


class TopUpIn(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    amount: CreditAmount = Field(description="Credit bought, minor units")
    purchase_amount: CreditAmount | None = Field(
        default=None, description="What the customer pays, minor units (default: amount)"
    )
    priority: int = Field(default=50, ge=0, le=100)
    expires_at: Instant | None = None
    description: Text | None = Field(default=None, max_length=256)


def _check_times(effective_at: datetime | None, expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= (effective_at or datetime.now(UTC)):
        _refuse("expires_at", "must be after the grant takes effect (effective_at, or now)")


async def _grant(
    request: Request, st: State, tx: Tx, tenant_id: str, external_id: str, body: dict[str, Any]
) -> Response:
    customer = await _customer(tx, tenant_id, external_id)
    currency = body.pop("currency", None) or customer.currency
    if currency != customer.currency:
        _refuse(
            "currency",
            f"the customer pays in {customer.currency}; a grant in {currency} cannot pay its "
            "invoices",
        )
    _check_times(body.get("effective_at"), body.get("expires_at"))
    if body.get("rollover") and not body.get("expires_at"):
        _refuse("rollover", "a rollover needs an expires_at (it happens at the expiry)")
    grant_id = body.pop("id", None) or f"grant_{new_id()}"
    spec = CreditGrantSpec(
        **body,
        id=grant_id,
        customer=external_id,
        currency=currency,
    )
    return await send(
        request,
        st,
        tenant_id,
        GrantCredits,
        spec,
        partition_key(tenant_id, external_id),
        spec.id,
        {"grant_id": spec.id},
    )


@router.post(
    "/customers/{external_id}/credits/grants",
    summary="Grant a customer credit (command)",
    **_ACCEPTED,
)
async def grant_credits(
    request: Request,
    external_id: CustomerPath,
    body: GrantIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Answers with the ``grant_id`` at once. The grant is immutable: the same grant again
    is a no-op, another one under the same id fails its command."""
    return await _grant(
        request, st, tx, tenant_id, external_id, body.model_dump(exclude_unset=True)
    )


@router.post(
    "/customers/{external_id}/credits/top-ups",
    summary="Sell a customer credit: an invoice now, the grant when it is paid (command)",
    **_ACCEPTED,
)
async def top_up(
    request: Request,
    external_id: CustomerPath,
    body: TopUpIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Issues a finalized invoice for ``purchase_amount`` (collected like any invoice:
    Stripe, or an offline payment); the grant of ``amount`` takes effect when it is paid.
    The command's result names the invoice."""
    fields = body.model_dump(exclude_unset=True)
    fields["purchase_amount"] = body.purchase_amount or body.amount
    fields["source"] = "purchased"
    return await _grant(request, st, tx, tenant_id, external_id, fields)


async def _grant_row(tx: Tx, tenant_id: str, grant_id: str) -> Any:
    grant = await tx.repo(CreditRepository).grant(tenant_id, grant_id)
    if grant is None:
        raise not_found("credit grant", grant_id, _PENDING_HINT)
    return grant


class VoidIn(_In):
    reason: Text | None = Field(default=None, max_length=1024)


@router.post(
    "/credit-grants/{grant_id}/void", summary="Void what is left of a grant (command)", **_ACCEPTED
)
async def void_grant(
    request: Request,
    grant_id: GrantIdPath,
    body: VoidIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Fails its command for a grant applied to an invoice that stands (void the invoice
    first: its credits return) and for an unpaid top-up (void its invoice)."""
    grant = await _grant_row(tx, tenant_id, grant_id)
    customer = await tx.repo(CreditRepository).customer_by_id(grant.customer_id)
    spec = VoidCreditGrantSpec(grant_id=grant_id, reason=body.reason)
    return await send(
        request,
        st,
        tenant_id,
        VoidCreditGrant,
        spec,
        partition_key(tenant_id, customer.external_id),
        grant_id,
    )


@router.get("/credit-grants/{grant_id}", response_model=CreditGrantData, summary="One credit grant")
async def get_grant(grant_id: GrantIdPath, tx: Unit, tenant_id: Tenant) -> CreditGrantData:
    grant = await _grant_row(tx, tenant_id, grant_id)
    customer = await tx.repo(CreditRepository).customer_by_id(grant.customer_id)
    (view,) = await invoicing.credit_balances(tx, [customer], datetime.now(UTC))
    return next(g for g in view.grants if g.grant_id == grant_id)


# --- balances and the ledger -----------------------------------------------------------


class CreditsView(BaseModel):
    customer: str
    currency: str
    as_of: datetime
    balance: int = Field(description="The sum of the grants' balances as of as_of")
    pending_usage_cost: int = Field(
        description="What the customer's drafts and current periods would be invoiced now "
        "(with tax when credits apply after tax)"
    )
    projected_balance: int = Field(
        description="balance - pending_usage_cost: the remaining credit (may be negative)"
    )
    grants: list[CreditGrantData]


@router.get(
    "/customers/{external_id}/credits",
    response_model=CreditsView,
    summary="A customer's credit: grants, balance, pending usage cost, projected balance",
)
async def get_credits(
    external_id: CustomerPath,
    tx: Unit,
    tenant_id: Tenant,
    as_of: Instant | None = Query(None, description="Balances as of this time (default: now)"),
) -> CreditsView:
    customer = await _customer(tx, tenant_id, external_id)
    at = as_of or datetime.now(UTC)
    (view,) = await invoicing.credit_balances(tx, [customer], at)
    return CreditsView(
        customer=external_id,
        currency=customer.currency,
        as_of=at,
        balance=view.balance,
        pending_usage_cost=view.pending,
        projected_balance=view.projected,
        grants=list(view.grants),
    )


class LedgerEntryView(BaseModel):
    position: int = Field(description="Increasing; pass the last one as 'after' for more")
    entry_id: str
    grant_id: str
    kind: EntryKind
    amount: int = Field(description="Signed, minor units")
    at: datetime = Field(description="When it counts in the balance")
    invoice_id: str | None
    reason: str | None
    recorded_at: datetime


@router.get(
    "/customers/{external_id}/credits/ledger",
    response_model=list[LedgerEntryView],
    summary="A customer's credit ledger, in the order it was written",
)
async def get_ledger(
    external_id: CustomerPath,
    tx: Unit,
    tenant_id: Tenant,
    limit: int = Query(100, ge=1, le=1000),
    after: int | None = Query(None, ge=0, le=2**62, description="A position from a last page"),
) -> list[LedgerEntryView]:
    customer = await _customer(tx, tenant_id, external_id)
    rows = await tx.repo(CreditRepository).ledger(tenant_id, customer.id, limit, after)
    return [
        LedgerEntryView(
            position=e.seq,
            entry_id=e.id,
            grant_id=e.grant_id,
            kind=e.kind,
            amount=e.amount,
            at=e.at,
            invoice_id=e.invoice_id,
            reason=e.reason,
            recorded_at=e.created_at,
        )
        for e in rows
    ]


# --- automatic top-ups -----------------------------------------------------------------


class AutoTopUpIn(_In):
    enabled: bool = True
    threshold: ThresholdAmount = Field(
        default=0, description="Top up when the projected balance falls below this"
    )
    amount: CreditAmount = Field(description="Credit bought each time, minor units")
    purchase_amount: CreditAmount | None = Field(
        default=None, description="What the customer pays (default: amount)"
    )
    priority: int = Field(default=50, ge=0, le=100)
    expires_after_days: int | None = Field(default=None, ge=1, le=3660)


class AutoTopUpView(AutoTopUpIn):
    armed: bool = Field(description="False from a top-up until the balance is above again")
    count: int = Field(description="Automatic top-ups so far")


@router.put(
    "/customers/{external_id}/credits/auto-top-up",
    summary="Set a customer's automatic top-up (command)",
    **_ACCEPTED,
)
async def set_auto_top_up(
    request: Request,
    external_id: CustomerPath,
    body: AutoTopUpIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Buys ``amount`` of credit (an invoice for ``purchase_amount``) when the projected
    balance falls below ``threshold``, at most once per crossing."""
    await _customer(tx, tenant_id, external_id)
    spec = AutoTopUpSpec(customer=external_id, **body.model_dump())
    return await send(
        request,
        st,
        tenant_id,
        ConfigureAutoTopUp,
        spec,
        partition_key(tenant_id, external_id),
        external_id,
    )


@router.get(
    "/customers/{external_id}/credits/auto-top-up",
    response_model=AutoTopUpView,
    summary="A customer's automatic top-up",
)
async def get_auto_top_up(external_id: CustomerPath, tx: Unit, tenant_id: Tenant) -> AutoTopUpView:
    customer = await _customer(tx, tenant_id, external_id)
    row = await tx.repo(CreditRepository).auto_top_up(tenant_id, customer.id)
    if row is None:
        raise not_found("automatic top-up of customer", external_id, _PENDING_HINT)
    return AutoTopUpView.model_validate(row, from_attributes=True)


# --- commitments -----------------------------------------------------------------------


class CommitmentIn(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    amount: CreditAmount = Field(description="The commitment, minor units")
    currency: str | None = Field(default=None, description="The customer's (the default)")
    start: Instant
    end: Instant
    description: Text | None = Field(default=None, max_length=256)


class CommitmentView(BaseModel):
    commitment_id: str
    currency: str
    amount: int
    start: datetime
    end: datetime
    drawn: int = Field(description="What invoices of periods starting in the term drew")
    remaining: int = Field(
        description="amount - drawn, at least 0: the shortfall the true-up invoices (or would)"
    )
    status: Literal["upcoming", "active", "ended", "trued_up"] = Field(
        description="ended: the term is over, its true-up waits for its last invoices"
    )
    true_up_invoice_id: str | None = None
    description: str | None = None


@router.post(
    "/customers/{external_id}/commitments",
    summary="Record a customer's spend commitment over a term (command)",
    **_ACCEPTED,
)
async def create_commitment(
    request: Request,
    external_id: CustomerPath,
    body: CommitmentIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Invoices of periods starting in [start, end) draw it down by their subtotal; usage is
    billed at the plan's rates throughout; after ``end``, once those invoices are final, what
    was not drawn is invoiced as a shortfall true-up."""
    customer = await _customer(tx, tenant_id, external_id)
    currency = body.currency or customer.currency
    if currency != customer.currency:
        _refuse("currency", f"the customer pays in {customer.currency}, not {currency}")
    if body.end <= body.start:
        _refuse("end", "must be after start")
    spec = CommitmentSpec(
        id=body.id or f"commit_{new_id()}",
        customer=external_id,
        currency=currency,
        amount=body.amount,
        start=body.start,
        end=body.end,
        description=body.description,
    )
    return await send(
        request,
        st,
        tenant_id,
        CreateCommitment,
        spec,
        partition_key(tenant_id, external_id),
        spec.id,
        {"commitment_id": spec.id},
    )


@router.get(
    "/customers/{external_id}/commitments",
    response_model=list[CommitmentView],
    summary="A customer's commitments: drawn, remaining, true-up",
)
async def list_commitments(
    external_id: CustomerPath, tx: Unit, tenant_id: Tenant
) -> list[CommitmentView]:
    customer = await _customer(tx, tenant_id, external_id)
    now = datetime.now(UTC)
    out = []
    for state in await tx.repo(CreditRepository).commitments([customer.id]):
        c = state.commitment
        status: Literal["upcoming", "active", "ended", "trued_up"] = (
            "trued_up"
            if state.trued_up
            else "upcoming"
            if now < c.start
            else "active"
            if now < c.end
            else "ended"
        )
        out.append(
            CommitmentView(
                commitment_id=c.id,
                currency=c.currency,
                amount=c.amount,
                start=c.start,
                end=c.end,
                drawn=state.drawn,
                remaining=max(state.left, 0),
                status=status,
                true_up_invoice_id=state.true_up_invoice_id,
                description=c.description,
            )
        )
    return out

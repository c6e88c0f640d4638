"""The partners API (docs/partners.md): partners and their tiers, commission rules, the
attribution of customers to partners, the commission ledger, commission statements and the
payouts recorded against them.

Writes become commands on ``billstream.commands.partners.v1`` keyed by the tenant
(202 + command id). The door refuses at once what it can check: the shape of a rule (its
kind's field and only that one, at most one of plan and product, tier bounds ascending with
the last one open, a currency for any amount) naming the field (422); an unknown customer,
partner or statement in the path (404) or partner in an attribution's body (404); a
statement's month that has not ended, a payout above what is left payable (422). The
worker checks again under its locks (a partner, statement or payout may change in between).

Reads come from the partners read model (``storage.partners``), turned into contracts by
the partners face (``workers.partners``).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from schemas import topics
from schemas.bounds import EXTERNAL_ID_PATTERN, Line
from schemas.envelope import new_id
from schemas.partners import (
    PERIOD_PATTERN,
    SLUG_PATTERN,
    STATEMENT_ID_PATTERN,
    AttributeCustomer,
    AttributionData,
    AttributionSpec,
    CommissionData,
    CommissionRuleData,
    CommissionRuleSpec,
    IssueCommissionStatement,
    PartnerData,
    PartnerSpec,
    PayoutSpec,
    RecordCommissionPayout,
    StatementData,
    StatementSpec,
    UpsertCommissionRule,
    UpsertPartner,
    period_bounds,
)
from storage.invoicing.credits import CreditRepository
from storage.partners import PartnerRepository
from workers import partners
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Amount, Instant
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import CommandAccepted, send_command
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.partners import PartnerRow, StatementRow

router = APIRouter(prefix="/v1", tags=["partners"])

PartnerPath = Annotated[str, Path(pattern=SLUG_PATTERN, description="A partner's id.")]
CustomerPath = Annotated[
    str, Path(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id.")
]
StatementPath = Annotated[
    str, Path(pattern=STATEMENT_ID_PATTERN, description="cst_ + 32 hex digits.")
]
_PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"
_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}
#: entries, partners or rules per page at most
MAX_PAGE = 1000

_send = functools.partial(send_command, topic=topics.COMMANDS_PARTNERS)
"""``send_command`` on billstream.commands.partners.v1 (every command keyed by the tenant)."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _refuse(field: str, reason: str) -> None:
    raise invalid(f"{field}: {reason}", [{"field": field, "reason": reason}])


async def _partner(tx: Tx, tenant_id: str, partner_id: str) -> PartnerRow:
    row = await tx.repo(PartnerRepository).partner(tenant_id, partner_id)
    if row is None:
        raise not_found("partner", partner_id, _PENDING_HINT)
    return row


async def _statement(tx: Tx, tenant_id: str, statement_id: str) -> StatementRow:
    row = await tx.repo(PartnerRepository).statement(tenant_id, statement_id)
    if row is None:
        raise not_found("commission statement", statement_id)
    return row


# --- partners ---------------------------------------------------------------------------


class PartnerAccepted(CommandAccepted):
    partner_id: str


@router.post(
    "/partners",
    status_code=202,
    response_model=PartnerAccepted,
    summary="Create a partner, or change its name, tier or email (command)",
)
async def upsert_partner(
    request: Request, spec: PartnerSpec, st: State, tenant_id: Tenant
) -> Response:
    """Publishes ``UpsertPartner``. A partner's tier may change: the new tier's rules apply
    to the commissions accrued after the change, never to those before."""
    extra = {"partner_id": spec.partner_id}
    return await _send(
        request, st, tenant_id, UpsertPartner, spec, tenant_id, spec.partner_id, extra
    )


@router.get("/partners", response_model=list[PartnerData], summary="Partners, by id")
async def list_partners(
    tx: Unit,
    tenant_id: Tenant,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    after: Annotated[
        str | None, Query(pattern=SLUG_PATTERN, description="The last partner_id of a page.")
    ] = None,
) -> list[PartnerData]:
    rows = await tx.repo(PartnerRepository).partners(tenant_id, limit=limit, after=after)
    return [partners.partner_data(r) for r in rows]


@router.get("/partners/{partner_id}", response_model=PartnerData, summary="One partner")
async def get_partner(partner_id: PartnerPath, tx: Unit, tenant_id: Tenant) -> PartnerData:
    return partners.partner_data(await _partner(tx, tenant_id, partner_id))


# --- commission rules ------------------------------------------------------------------------


@router.post(
    "/commission-rules",
    status_code=202,
    response_model=CommandAccepted,
    summary="Define a commission rule, or replace the rule of that key (command)",
)
async def upsert_commission_rule(
    request: Request, spec: CommissionRuleSpec, st: State, tenant_id: Tenant
) -> Response:
    """Publishes ``UpsertCommissionRule``. A rule key defined again replaces the rule for
    the commissions accrued after it; those accrued before keep what they earned."""
    return await _send(request, st, tenant_id, UpsertCommissionRule, spec, tenant_id, spec.key, {})


@router.get(
    "/commission-rules",
    response_model=list[CommissionRuleData],
    summary="Commission rules, by partner tier and key",
)
async def list_commission_rules(
    tx: Unit,
    tenant_id: Tenant,
    partner_tier: Annotated[
        str | None, Query(pattern=SLUG_PATTERN, description="Only this tier's rules.")
    ] = None,
) -> list[CommissionRuleData]:
    rows = await tx.repo(PartnerRepository).rules(tenant_id, partner_tier=partner_tier)
    return [partners.rule_data(r) for r in rows]


# --- attribution ----------------------------------------------------------------------------


class AttributionIn(_In):
    partner_id: str = Field(pattern=SLUG_PATTERN, description="The partner (404 if unknown)")
    effective_from: Instant = Field(
        description="The customer's invoices whose period starts at or after this belong to "
        "the partner (until a later attribution)"
    )


@router.post(
    "/customers/{customer}/partner",
    summary="Attribute a customer to a partner from a date (command)",
    **_ACCEPTED,
)
async def attribute_customer(
    request: Request,
    customer: CustomerPath,
    body: AttributionIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Publishes ``AttributeCustomer``. The latest attribution whose ``effective_from`` is at
    or before an invoice's ``period_start`` says whose the invoice is; invoices paid before
    the attribution was recorded earn nothing retroactively. An unknown customer or partner
    is 404."""
    if await tx.repo(CreditRepository).find_customer(tenant_id, customer) is None:
        raise not_found("customer", customer, _PENDING_HINT)
    await _partner(tx, tenant_id, body.partner_id)
    spec = AttributionSpec(
        customer=customer, partner_id=body.partner_id, effective_from=body.effective_from
    )
    return await _send(request, st, tenant_id, AttributeCustomer, spec, tenant_id, customer)


@router.get(
    "/partners/{partner_id}/customers",
    response_model=list[AttributionData],
    summary="The customers attributed to a partner",
)
async def list_partner_customers(
    partner_id: PartnerPath, tx: Unit, tenant_id: Tenant
) -> list[AttributionData]:
    """Every attribution naming the partner, by customer and ``effective_from`` (a customer
    attributed to another partner later is still listed, with its own date)."""
    await _partner(tx, tenant_id, partner_id)
    rows = await tx.repo(PartnerRepository).attributions(tenant_id, partner_id)
    return [partners.attribution_data(r) for r in rows]


# --- the ledger --------------------------------------------------------------------------------


@router.get(
    "/partners/{partner_id}/commissions",
    response_model=list[CommissionData],
    summary="A partner's commission ledger: accruals and reversals, in order",
)
async def list_commissions(
    partner_id: PartnerPath,
    tx: Unit,
    tenant_id: Tenant,
    from_: Annotated[
        Instant | None, Query(alias="from", description="Effective at or after (inclusive).")
    ] = None,
    to: Annotated[Instant | None, Query(description="Effective before (exclusive).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> list[CommissionData]:
    """By ``effective_at`` (then entry id): each entry with its invoice, rule, exact base,
    amount and cause, and the statement it is on once one lists it. For the next page, pass
    the last entry's ``effective_at`` as ``from`` and skip the entries already read."""
    if from_ is not None and to is not None and from_ >= to:
        _refuse("to", "must be after from")
    await _partner(tx, tenant_id, partner_id)
    rows = await tx.repo(PartnerRepository).entries(
        tenant_id, partner_id, start=from_, end=to, limit=limit
    )
    return [partners.commission_data(r) for r in rows]


# --- statements ----------------------------------------------------------------------------


class StatementIn(_In):
    period: str = Field(pattern=PERIOD_PATTERN, description="A UTC month that has ended: '2026-03'")


@router.post(
    "/partners/{partner_id}/statements",
    summary="Issue the partner's commission statement(s) for a month that has ended (command)",
    **_ACCEPTED,
)
async def issue_statement(
    request: Request,
    partner_id: PartnerPath,
    body: StatementIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Publishes ``IssueCommissionStatement``: one statement per currency over every ledger
    entry of the partner effective before the month's end and not on a statement yet. The
    outcome lists the statements; issuing the same month again answers the same ones. A
    month that has not ended (UTC) is refused (422, ``period``)."""
    _, end = period_bounds(body.period)
    if end > datetime.now(UTC):
        _refuse("period", f"the month has not ended yet (it ends {end.isoformat()})")
    await _partner(tx, tenant_id, partner_id)
    spec = StatementSpec(partner_id=partner_id, period=body.period)
    subject = f"{partner_id}/{body.period}"
    return await _send(request, st, tenant_id, IssueCommissionStatement, spec, tenant_id, subject)


@router.get(
    "/partners/{partner_id}/statements",
    response_model=list[StatementData],
    summary="A partner's commission statements, newest first",
)
async def list_statements(
    partner_id: PartnerPath,
    tx: Unit,
    tenant_id: Tenant,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> list[StatementData]:
    await _partner(tx, tenant_id, partner_id)
    repo = tx.repo(PartnerRepository)
    rows = await repo.statements(tenant_id, partner_id, limit=limit)
    return [await partners.statement_data(repo, r) for r in rows]


@router.get(
    "/commission-statements/{statement_id}",
    response_model=StatementData,
    summary="One commission statement, its lines traceable to their invoices",
)
async def get_statement(statement_id: StatementPath, tx: Unit, tenant_id: Tenant) -> StatementData:
    row = await _statement(tx, tenant_id, statement_id)
    return await partners.statement_data(tx.repo(PartnerRepository), row)


class PayoutIn(_In):
    amount: Amount = Field(description="Minor units paid; at most what is left payable")
    reference: Line = Field(
        min_length=1, max_length=256, description="The transfer's reference, as the bank has it"
    )
    paid_at: Instant | None = Field(default=None, description="Default: when it is recorded")


class PayoutAccepted(CommandAccepted):
    payout_id: str


@router.post(
    "/commission-statements/{statement_id}/payouts",
    status_code=202,
    response_model=PayoutAccepted,
    summary="Record a payout to the partner against a statement (command)",
)
async def record_payout(
    request: Request,
    statement_id: StatementPath,
    body: PayoutIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Publishes ``RecordCommissionPayout``. Checked against the statement as it is when the
    request arrives: the amount may not exceed what is left payable (422, ``amount``); a
    statement with nothing payable (paid, or carried) takes none. The worker checks again
    under the statement's lock."""
    row = await _statement(tx, tenant_id, statement_id)
    left = max(row.amount_payable - row.amount_paid, 0)
    if body.amount > left:
        _refuse("amount", f"exceeds what is left payable ({left} in minor units of {row.currency})")
    payout_id = f"po_{new_id()}"
    spec = PayoutSpec(payout_id=payout_id, statement_id=statement_id, **body.model_dump())
    return await _send(
        request, st, tenant_id, RecordCommissionPayout, spec, tenant_id, statement_id,
        {"payout_id": payout_id},
    )  # fmt: skip

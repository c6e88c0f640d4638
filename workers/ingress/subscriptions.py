"""Subscriptions API: subscribe, cancel, change plans (commands on
``billstream.commands.invoicing.v1``, keyed ``tenant:customer``), and the subscription reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.bounds import EXTERNAL_ID_PATTERN, ID_PATTERN, present
from schemas.envelope import new_id
from schemas.invoicing import (
    MAX_TRIAL_DAYS,
    PLAN_KEY_PATTERN,
    CancelSpec,
    CancelSubscription,
    ChangeSubscriptionPlan,
    CreateSubscription,
    PlanChangeSpec,
    SubscriptionData,
    SubscriptionSpec,
    hour_aligned,
)
from schemas.topics import partition_key
from storage.invoicing import InvoicingRepository
from workers import invoicing
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant
from workers.ingress.invoicing import _ACCEPTED, _PENDING_HINT, _customer, send
from workers.ingress.problems import invalid, not_found
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import Subscription

router = APIRouter(prefix="/v1", tags=["invoicing"])
SubscriptionIdPath = Annotated[str, Path(pattern=ID_PATTERN)]


class SubscriptionIn(BaseModel):
    # a trial is given in days or by its end, not both: said in OpenAPI
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"not": {"allOf": [present("trial_days"), present("trial_end")]}},
    )

    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    plan: str = Field(pattern=PLAN_KEY_PATTERN)
    start: Instant | None = Field(
        default=None, description="Billing anchor, a whole UTC hour (default: this hour)"
    )
    trial_days: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TRIAL_DAYS,
        description="A trial of this many days from 'start', overriding the plan's (0: none)",
    )
    trial_end: Instant | None = Field(
        default=None, description="The trial ends here (a whole UTC hour after 'start')"
    )
    trial_end_behavior: Literal["convert", "cancel"] = Field(
        default="convert",
        description="convert: paid periods start at the trial's end; cancel: it ends there",
    )
    bill_trial_usage: bool = Field(
        default=False, description="Bill the trial's usage (its flat fees are never billed)"
    )

    _start = field_validator("start", "trial_end")(hour_aligned)


def _refuse(field: str, message: str) -> None:
    raise invalid(f"{field}: {message}", [{"field": field, "reason": message}])


@router.post("/subscriptions", summary="Subscribe a customer to a plan (command)", **_ACCEPTED)
async def create_subscription(
    request: Request, body: SubscriptionIn, st: State, tenant_id: Tenant
) -> Response:
    """Answers with the ``subscription_id`` at once; the command fails for an unknown
    customer or plan, a plan in another currency, or a live subscription to the same plan."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if body.trial_days is not None and body.trial_end is not None:
        _refuse("trial_days", "give 'trial_days' or 'trial_end', not both")
    if body.trial_end is not None and body.trial_end <= (body.start or now):
        _refuse("trial_end", "'trial_end' must be after 'start'")
    spec = SubscriptionSpec(
        id=body.id or f"sub_{new_id()}",
        customer=body.customer,
        plan=body.plan,
        start=body.start or now,
        trial_days=body.trial_days,
        trial_end=body.trial_end,
        trial_end_behavior=body.trial_end_behavior,
        bill_trial_usage=body.bill_trial_usage,
    )
    key = partition_key(tenant_id, spec.customer)
    return await send(
        request,
        st,
        tenant_id,
        CreateSubscription,
        spec,
        key,
        spec.id,
        extra={"subscription_id": spec.id},
    )


async def _subscription_key(tx: Tx, tenant_id: str, id: str) -> str:
    repo = tx.repo(InvoicingRepository)
    sub = await repo.subscription(tenant_id, id)
    if sub is None:
        raise not_found("subscription", id, _PENDING_HINT)
    customer = (await repo.customers([sub.customer_id]))[sub.customer_id]
    return partition_key(tenant_id, customer.external_id)


class CancelIn(BaseModel):
    # 'at' goes with 'immediately' only (CancelSpec refuses it otherwise): said in OpenAPI
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": present("at"),
            "then": {"properties": {"mode": {"const": "immediately"}}},
        },
    )

    mode: Literal["at_period_end", "immediately"]
    at: Instant | None = None


@router.post(
    "/subscriptions/{subscription_id}/cancel",
    summary="Cancel a subscription (command)",
    **_ACCEPTED,
)
async def cancel_subscription(
    request: Request,
    subscription_id: SubscriptionIdPath,
    body: CancelIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """``at_period_end``: the current period is billed in full, then it ends.
    ``immediately``: it ends at ``at`` (default: now); the final invoice prorates flat fees
    to the second and bills usage up to the end of that hour."""
    spec = CancelSpec(subscription_id=subscription_id, mode=body.mode, at=body.at)
    key = await _subscription_key(tx, tenant_id, subscription_id)
    return await send(request, st, tenant_id, CancelSubscription, spec, key, subscription_id)


class ChangePlanIn(BaseModel):
    # 'at' goes with 'immediately' only (PlanChangeSpec refuses it otherwise): said in OpenAPI
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": present("at"),
            "then": {"properties": {"mode": {"const": "immediately"}}, "required": ["mode"]},
        },
    )

    plan: str = Field(pattern=PLAN_KEY_PATTERN)
    mode: Literal["at_period_end", "immediately"] = "at_period_end"
    at: Instant | None = None


@router.post(
    "/subscriptions/{subscription_id}/change-plan",
    summary="Change plans at the next period boundary or immediately (command)",
    **_ACCEPTED,
)
async def change_plan(
    request: Request,
    subscription_id: SubscriptionIdPath,
    body: ChangePlanIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """``at_period_end`` (the default): the new plan starts at the next period boundary.
    ``immediately``: the current period is cut at ``at`` (default: now) and invoiced on the
    old plan (flat fees prorated to the second, usage up to the end of that hour); the new
    plan starts at ``at``, its first period prorated for the rest (docs/subscriptions.md)."""
    spec = PlanChangeSpec(
        subscription_id=subscription_id, plan=body.plan, mode=body.mode, at=body.at
    )
    key = await _subscription_key(tx, tenant_id, subscription_id)
    return await send(request, st, tenant_id, ChangeSubscriptionPlan, spec, key, subscription_id)


async def _subscription_view(tx: Tx, sub: Subscription) -> SubscriptionData:
    repo = tx.repo(InvoicingRepository)
    customer = (await repo.customers([sub.customer_id]))[sub.customer_id]
    plan_ids = {sub.plan_id} | ({sub.next_plan_id} if sub.next_plan_id else set())
    return invoicing.subscription_data(sub, customer.external_id, await repo.plans(plan_ids))


@router.get("/subscriptions", response_model=list[SubscriptionData], summary="List subscriptions")
async def list_subscriptions(
    tx: Unit,
    tenant_id: Tenant,
    customer: str | None = Query(None, description="A customer's external_id"),
    limit: int = Query(100, ge=1, le=1000),
) -> list[SubscriptionData]:
    customer_id = (await _customer(tx, tenant_id, customer)).id if customer else None
    subs = await tx.repo(InvoicingRepository).list_subscriptions(tenant_id, customer_id, limit)
    return [await _subscription_view(tx, s) for s in subs]


@router.get(
    "/subscriptions/{subscription_id}", response_model=SubscriptionData, summary="One subscription"
)
async def get_subscription(subscription_id: str, tx: Unit, tenant_id: Tenant) -> SubscriptionData:
    sub = await tx.repo(InvoicingRepository).subscription(tenant_id, subscription_id)
    if sub is None:
        raise not_found("subscription", subscription_id)
    return await _subscription_view(tx, sub)

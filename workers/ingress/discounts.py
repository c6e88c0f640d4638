"""Discounts API: coupons, promotion codes, and the discounts of a customer.

Writes become commands on ``billstream.commands.invoicing.v1`` (202 + command id): coupons
and promotion codes keyed by the tenant (a code's command follows its coupon's), discounts
``tenant:customer``. Reads come from PostgreSQL. The door refuses at once what it can check
without state (422 naming the field: both or neither of percent_off and amount_off, a float,
a percent of 0 or above 100, amount_off without currency, ...) and an unknown customer,
coupon or promotion code (404). What needs state under a lock (max_redemptions, redeem_by,
an expired code, another currency than the customer's) fails the command, naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import (
    EXTERNAL_ID_PATTERN,
    ID_PATTERN,
    Currency,
    Line,
    present,
    show_model_bounds,
)
from schemas.credits import CreditAmount
from schemas.discounts import (
    MAX_PERIODS,
    MAX_REDEMPTIONS,
    PROMOTION_CODE_PATTERN,
    ApplyDiscount,
    ApplyDiscountSpec,
    CouponData,
    CouponScope,
    CouponSpec,
    CreateCoupon,
    CreatePromotionCode,
    DiscountData,
    Duration,
    Percent,
    PromotionCodeData,
    PromotionCodeSpec,
    RemoveDiscount,
    RemoveDiscountSpec,
)
from schemas.envelope import new_id
from schemas.topics import partition_key
from storage.invoicing import InvoicingRepository
from storage.invoicing.discounts import DiscountRepository
from workers import invoicing
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant
from workers.ingress.invoicing import send
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import CommandAccepted
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import Customer

router = APIRouter(prefix="/v1", tags=["discounts"])

CustomerPath = Annotated[str, Path(pattern=EXTERNAL_ID_PATTERN)]
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]
CodePath = Annotated[str, Path(pattern=PROMOTION_CODE_PATTERN)]
_PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"
_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


def _refuse(field: str, message: str) -> None:
    raise invalid(f"{field}: {message}", [{"field": field, "reason": message}])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- coupons ---------------------------------------------------------------------------


class CouponIn(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    name: Line = Field(min_length=1, max_length=256, description="Shown on discount lines")
    percent_off: Percent | None = Field(
        default=None, description='e.g. "20" for 20 % off (exclusive with amount_off)'
    )
    amount_off: CreditAmount | None = Field(
        default=None, description="Minor units off each invoice (needs currency)"
    )
    currency: Currency | None = Field(default=None, description="amount_off's currency")
    duration: Duration
    duration_in_periods: int | None = Field(
        default=None, ge=1, le=MAX_PERIODS, description="With duration 'repeating'"
    )
    applies_to: CouponScope | None = None
    max_redemptions: int | None = Field(default=None, ge=1, le=MAX_REDEMPTIONS)
    redeem_by: Instant | None = None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # what _check_coupon refuses, said in OpenAPI
        repeating = {"required": ["duration"], "properties": {"duration": {"const": "repeating"}}}
        rules = [
            {"oneOf": [present("percent_off"), present("amount_off")]},
            {"if": present("amount_off"), "then": present("currency"), "else": _null("currency")},
            {"if": repeating, "then": present("duration_in_periods"),
             "else": _null("duration_in_periods")},
        ]  # fmt: skip
        return show_model_bounds(cls is CouponIn, core_schema, handler, {"allOf": rules})


def _null(name: str) -> dict[str, Any]:
    """JSON Schema: property ``name`` is absent or null."""
    return {"properties": {name: {"type": "null"}}}


def _check_coupon(body: CouponIn) -> None:
    if body.percent_off is not None and body.amount_off is not None:
        _refuse("amount_off", "give either percent_off or amount_off, not both")
    if body.percent_off is None and body.amount_off is None:
        _refuse("percent_off", "give percent_off or amount_off")
    if body.amount_off is not None and body.currency is None:
        _refuse("currency", "amount_off needs a currency")
    if body.percent_off is not None and body.currency is not None:
        _refuse("currency", "currency goes with amount_off only")
    if body.duration == "repeating" and body.duration_in_periods is None:
        _refuse("duration_in_periods", "duration 'repeating' needs duration_in_periods")
    if body.duration != "repeating" and body.duration_in_periods is not None:
        _refuse("duration_in_periods", "goes with duration 'repeating' only")


@router.post("/coupons", summary="Define a coupon (command)", **_ACCEPTED)
async def create_coupon(request: Request, body: CouponIn, st: State, tenant_id: Tenant) -> Response:
    """Answers with the ``coupon_id`` at once. Coupons are immutable: the same terms again
    succeed, other terms under the same id fail the command (conflict, field ``id``)."""
    _check_coupon(body)
    fields = body.model_dump(exclude_unset=True)
    fields["id"] = body.id or f"coupon_{new_id()}"
    try:
        spec = CouponSpec(**fields)
    except ValidationError as e:  # every rule is checked above; never a 500
        _refuse("body", str(e.errors()[0]["msg"]))
        raise
    return await send(
        request, st, tenant_id, CreateCoupon, spec, tenant_id, spec.id, {"coupon_id": spec.id}
    )


async def _coupon(tx: Tx, tenant_id: str, id: str) -> CouponData:
    c = await tx.repo(DiscountRepository).coupon(tenant_id, id)
    if c is None:
        raise not_found("coupon", id, _PENDING_HINT)
    return CouponData.model_validate(c.spec | {"times_redeemed": c.times_redeemed})


@router.get("/coupons", response_model=list[CouponData], summary="List coupons (by id)")
async def list_coupons(
    tx: Unit,
    tenant_id: Tenant,
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(None, pattern=ID_PATTERN, description="The last id of a page"),
) -> list[CouponData]:
    rows = await tx.repo(DiscountRepository).list_coupons(tenant_id, limit, after)
    return [CouponData.model_validate(c.spec | {"times_redeemed": c.times_redeemed}) for c in rows]


@router.get("/coupons/{coupon_id}", response_model=CouponData, summary="One coupon")
async def get_coupon(coupon_id: IdPath, tx: Unit, tenant_id: Tenant) -> CouponData:
    return await _coupon(tx, tenant_id, coupon_id)


# --- promotion codes -------------------------------------------------------------------


@router.post("/promotion-codes", summary="Define a promotion code (command)", **_ACCEPTED)
async def create_promotion_code(
    request: Request, body: PromotionCodeSpec, st: State, tenant_id: Tenant
) -> Response:
    """A customer-facing code (unique per tenant in any letter case) that redeems a coupon;
    optionally limited in redemptions and time. An unknown coupon fails the command
    (``not_found``, field ``coupon``)."""
    return await send(
        request, st, tenant_id, CreatePromotionCode, body, tenant_id, body.code,
        {"code": body.code},
    )  # fmt: skip


@router.get(
    "/promotion-codes/{code}",
    response_model=PromotionCodeData,
    summary="One promotion code (in any letter case)",
)
async def get_promotion_code(code: CodePath, tx: Unit, tenant_id: Tenant) -> PromotionCodeData:
    row = await tx.repo(DiscountRepository).promotion_code(tenant_id, code)
    if row is None:
        raise not_found("promotion code", code, _PENDING_HINT)
    return PromotionCodeData(
        code=row.code,
        coupon=row.coupon_id,
        max_redemptions=row.max_redemptions,
        expires_at=row.expires_at,
        times_redeemed=row.times_redeemed,
    )


# --- discounts -------------------------------------------------------------------------


async def _customer(tx: Tx, tenant_id: str, external_id: str) -> Customer:
    c = await tx.repo(InvoicingRepository).customer(tenant_id, external_id, lock=False)
    if c is None:
        raise not_found("customer", external_id, _PENDING_HINT)
    return c


class DiscountIn(_In):
    coupon: str | None = Field(default=None, pattern=ID_PATTERN)
    promotion_code: str | None = Field(default=None, pattern=PROMOTION_CODE_PATTERN)
    subscription_id: str | None = Field(
        default=None, pattern=ID_PATTERN, description="Omit: every subscription of the customer"
    )
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        either = {"oneOf": [present("coupon"), present("promotion_code")]}
        return show_model_bounds(cls is DiscountIn, core_schema, handler, either)


@router.post(
    "/customers/{external_id}/discounts",
    summary="Apply a coupon or promotion code to a customer or its subscription (command)",
    **_ACCEPTED,
)
async def apply_discount(
    request: Request,
    external_id: CustomerPath,
    body: DiscountIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Answers with the ``discount_id`` at once. The redemption is counted by the command
    (it fails naming max_redemptions, redeem_by, expires_at or currency); invoices finalized
    from then on carry its discount lines."""
    if (body.coupon is None) == (body.promotion_code is None):
        _refuse("coupon", "give exactly one of coupon and promotion_code")
    await _customer(tx, tenant_id, external_id)
    repo = tx.repo(DiscountRepository)
    if body.coupon is not None:
        await _coupon(tx, tenant_id, body.coupon)
    elif await repo.promotion_code(tenant_id, str(body.promotion_code)) is None:
        raise not_found("promotion code", str(body.promotion_code), _PENDING_HINT)
    spec = ApplyDiscountSpec(
        id=body.id or f"disc_{new_id()}",
        customer=external_id,
        subscription_id=body.subscription_id,
        coupon=body.coupon,
        promotion_code=body.promotion_code,
    )
    return await send(
        request, st, tenant_id, ApplyDiscount, spec, partition_key(tenant_id, external_id),
        spec.id, {"discount_id": spec.id},
    )  # fmt: skip


async def _views(tx: Tx, tenant_id: str, rows: list[Any], external_id: str) -> list[DiscountData]:
    repo = tx.repo(DiscountRepository)
    coupons = await repo.coupons_by_id({(tenant_id, d.coupon_id) for d in rows})
    applied = await repo.applied({(tenant_id, d.id) for d in rows})
    return [
        invoicing.discount_data(
            d,
            invoicing.coupon_data(c.spec, c.times_redeemed),
            external_id,
            applied.get((tenant_id, d.id), (0, 0)),
        )
        for d in rows
        for c in [coupons[(tenant_id, d.coupon_id)]]
    ]


@router.get(
    "/customers/{external_id}/discounts",
    response_model=list[DiscountData],
    summary="A customer's discounts (removed ones too), in the order they apply",
)
async def list_discounts(
    external_id: CustomerPath, tx: Unit, tenant_id: Tenant
) -> list[DiscountData]:
    customer = await _customer(tx, tenant_id, external_id)
    rows = await tx.repo(DiscountRepository).of_customer(tenant_id, customer.id, 1000)
    return await _views(tx, tenant_id, rows, external_id)


async def _discount(tx: Tx, tenant_id: str, external_id: str, discount_id: str) -> Any:
    customer = await _customer(tx, tenant_id, external_id)
    d = await tx.repo(DiscountRepository).discount(tenant_id, discount_id)
    if d is None or d.customer_id != customer.id:
        raise not_found("discount", discount_id, _PENDING_HINT)
    return d


@router.get(
    "/customers/{external_id}/discounts/{discount_id}",
    response_model=DiscountData,
    summary="One discount of a customer",
)
async def get_discount(
    external_id: CustomerPath, discount_id: IdPath, tx: Unit, tenant_id: Tenant
) -> DiscountData:
    d = await _discount(tx, tenant_id, external_id, discount_id)
    (view,) = await _views(tx, tenant_id, [d], external_id)
    return view


@router.delete(
    "/customers/{external_id}/discounts/{discount_id}",
    summary="Remove a discount (command)",
    **_ACCEPTED,
)
async def remove_discount(
    request: Request,
    external_id: CustomerPath,
    discount_id: IdPath,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Invoices finalized from then on are not reduced by it; those finalized before keep
    their discount lines. Removing it again succeeds (no-op)."""
    await _discount(tx, tenant_id, external_id, discount_id)
    return await send(
        request, st, tenant_id, RemoveDiscount, RemoveDiscountSpec(discount_id=discount_id),
        partition_key(tenant_id, external_id), discount_id,
    )  # fmt: skip

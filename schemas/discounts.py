"""Coupons, promotion codes and discounts: commands on ``billstream.commands.invoicing.v1``
and events (``coupon.created``, ``promotion_code.created``, ``discount.applied``,
``discount.removed``) on ``billstream.events.invoicing.v1``. Invoicing owns them: a
discount is applied as discount lines in the transaction that finalizes an invoice
(docs/discounts.md).

A coupon is the terms (percent or amount off, for how many periods, on which plans or
prices); a promotion code is a customer-facing string that redeems a coupon; a discount is a
coupon redeemed for a customer (or one of its subscriptions).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import (
    EXTERNAL_ID_PATTERN,
    ID_PATTERN,
    Currency,
    EventTime,
    Line,
    ShowBounds,
    nonempty,
    show_model_bounds,
)
from schemas.credits import CreditAmount
from schemas.envelope import CloudEvent
from schemas.pricing import KEY_PATTERN, NonNegDecimal, PriceKey

PROMOTION_CODE_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
MAX_SCOPE_KEYS = 100
MAX_PERIODS = 120
MAX_REDEMPTIONS = 10**9


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _percent(value: Decimal) -> Decimal:
    if not Decimal(0) < value <= Decimal(100):
        raise ValueError("must be more than 0 and at most 100")
    return value


Percent = Annotated[
    NonNegDecimal,
    AfterValidator(_percent),
    ShowBounds(  # beside the anyOf: the pattern bounds the string form, the rest the integer
        {
            "pattern": r"^0*(100(\.0+)?|[0-9]{1,2}(\.[0-9]{1,12}0*)?)$",
            "not": {"type": "string", "pattern": r"^0+(\.0+)?$"},
            "exclusiveMinimum": 0,
            "maximum": 100,
        }
    ),
]
"""A percentage as an exact decimal string: ``"20"`` is 20 % off; ``0 < p <= 100``."""

PlanKey = Annotated[str, Field(pattern=KEY_PATTERN, description="A plan's key")]
Duration = Literal["once", "repeating", "forever"]


class CouponScope(_Model):
    """What a coupon reduces: lines of invoices of these plans, or lines of these prices
    (by key). Either list may be empty, not both. Omit the scope for every charge line."""

    plans: list[PlanKey] = Field(default_factory=list, max_length=MAX_SCOPE_KEYS)
    prices: list[PriceKey] = Field(default_factory=list, max_length=MAX_SCOPE_KEYS)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        either = {"anyOf": [nonempty("plans"), nonempty("prices")]}  # what _not_empty says
        return show_model_bounds(cls is CouponScope, core_schema, handler, either)

    @model_validator(mode="after")
    def _not_empty(self) -> CouponScope:
        if not self.plans and not self.prices:
            raise ValueError("name at least one plan or price (omit 'applies_to' for any line)")
        return self


class CouponSpec(_Model):
    id: str = Field(pattern=ID_PATTERN, description="Chosen by the caller")
    name: Line = Field(min_length=1, max_length=256, description="Shown on discount lines")
    percent_off: Percent | None = Field(
        default=None, description='Percent off each line, e.g. "20" (exclusive with amount_off)'
    )
    amount_off: CreditAmount | None = Field(
        default=None, description="Minor units off each invoice (needs currency)"
    )
    currency: Currency | None = Field(default=None, description="amount_off's currency")
    duration: Duration = Field(
        description="once: the first invoice; repeating: duration_in_periods invoices; forever"
    )
    duration_in_periods: int | None = Field(default=None, ge=1, le=MAX_PERIODS)
    applies_to: CouponScope | None = None
    max_redemptions: int | None = Field(default=None, ge=1, le=MAX_REDEMPTIONS)
    redeem_by: EventTime | None = Field(default=None, description="Last time it can be applied")

    @model_validator(mode="after")
    def _consistent(self) -> CouponSpec:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError("give exactly one of percent_off and amount_off")
        if self.amount_off is not None and self.currency is None:
            raise ValueError("amount_off needs a currency")
        if self.percent_off is not None and self.currency is not None:
            raise ValueError("currency goes with amount_off only")
        if (self.duration == "repeating") != (self.duration_in_periods is not None):
            raise ValueError("duration_in_periods goes with (and only with) duration 'repeating'")
        return self


class CreateCoupon(CloudEvent):
    """Define a coupon (immutable: the same terms again is a no-op, other terms under the
    same id are refused)."""

    type: Literal["CreateCoupon"] = "CreateCoupon"
    data: CouponSpec


class PromotionCodeSpec(_Model):
    code: str = Field(
        pattern=PROMOTION_CODE_PATTERN, description="Unique per tenant, case-insensitively"
    )
    coupon: str = Field(pattern=ID_PATTERN, description="The coupon it redeems")
    max_redemptions: int | None = Field(default=None, ge=1, le=MAX_REDEMPTIONS)
    expires_at: EventTime | None = None


class CreatePromotionCode(CloudEvent):
    """Define a promotion code (immutable, like coupons)."""

    type: Literal["CreatePromotionCode"] = "CreatePromotionCode"
    data: PromotionCodeSpec


class ApplyDiscountSpec(_Model):
    id: str = Field(pattern=ID_PATTERN, description="The discount's id (chosen by the ingress)")
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    subscription_id: str | None = Field(
        default=None, pattern=ID_PATTERN, description="Omit: every subscription of the customer"
    )
    coupon: str | None = Field(default=None, pattern=ID_PATTERN)
    promotion_code: str | None = Field(default=None, pattern=PROMOTION_CODE_PATTERN)

    @model_validator(mode="after")
    def _one(self) -> ApplyDiscountSpec:
        if (self.coupon is None) == (self.promotion_code is None):
            raise ValueError("give exactly one of coupon and promotion_code")
        return self


class ApplyDiscount(CloudEvent):
    """Redeem a coupon (directly or by a promotion code) for a customer or one of its
    subscriptions; it reduces the invoices finalized from then on (docs/discounts.md)."""

    type: Literal["ApplyDiscount"] = "ApplyDiscount"
    data: ApplyDiscountSpec


class RemoveDiscountSpec(_Model):
    discount_id: str = Field(pattern=ID_PATTERN)


class RemoveDiscount(CloudEvent):
    """End a discount: invoices finalized from then on are not reduced by it."""

    type: Literal["RemoveDiscount"] = "RemoveDiscount"
    data: RemoveDiscountSpec


# --- events ------------------------------------------------------------------------


class CouponData(CouponSpec):
    times_redeemed: int = Field(default=0, description="Discounts applied with it")


class CouponCreated(CloudEvent):
    type: Literal["coupon.created"] = "coupon.created"
    data: CouponData


class PromotionCodeData(PromotionCodeSpec):
    times_redeemed: int = 0


class PromotionCodeCreated(CloudEvent):
    type: Literal["promotion_code.created"] = "promotion_code.created"
    data: PromotionCodeData


class DiscountData(_Model):
    discount_id: str
    customer: str = Field(description="The customer's external_id")
    subscription_id: str | None = None
    coupon: CouponData
    promotion_code: str | None = None
    applied_at: datetime
    removed_at: datetime | None = None
    periods_applied: int = Field(default=0, description="Invoices it has been applied to")
    amount_applied: int = Field(default=0, description="What it took off them, minor units")


class DiscountApplied(CloudEvent):
    """A coupon was redeemed for a customer (or one of its subscriptions)."""

    type: Literal["discount.applied"] = "discount.applied"
    data: DiscountData


class DiscountRemoved(CloudEvent):
    type: Literal["discount.removed"] = "discount.removed"
    data: DiscountData


COMMANDS: tuple[type[CloudEvent], ...] = (
    CreateCoupon,
    CreatePromotionCode,
    ApplyDiscount,
    RemoveDiscount,
)
EVENTS: tuple[type[CloudEvent], ...] = (
    CouponCreated,
    PromotionCodeCreated,
    DiscountApplied,
    DiscountRemoved,
)

"""Payments events (``billstream.events.payments.v1``).

The payments context (Stripe collection, dunning, refunds) emits these; invoicing reads
``payment.succeeded`` to mark invoices paid. Out-of-band payments use the same event.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.currency import CurrencyCode
from schemas.envelope import CloudEvent


class PaymentData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    payment_id: str = Field(min_length=1, max_length=128)
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str = Field(description="The customer's external_id")
    amount: int = Field(gt=0, description="Minor units of currency")
    currency: CurrencyCode
    method: str = Field(default="card", max_length=64, description="card, bank_transfer, cash, …")


class PaymentSucceeded(CloudEvent):
    type: Literal["payment.succeeded"] = "payment.succeeded"
    data: PaymentData


PaymentEvent = PaymentSucceeded

EVENTS: tuple[type[CloudEvent], ...] = (PaymentSucceeded,)

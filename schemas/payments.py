"""Payments commands (``billstream.commands.payments.v1``), events
(``billstream.events.payments.v1``) and verified Stripe webhooks
(``billstream.integrations.stripe.v1``).

The payments context (Stripe collection, dunning, refunds) emits the events; invoicing
reads ``payment.succeeded`` to mark invoices paid (out-of-band payments use the same event),
``payment.refunded`` and ``payment.dunning_exhausted``. Stripe secrets travel only as
Fernet ciphertexts (``enc:…``): no message ever carries a secret in clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.bounds import Line, PositiveMinorUnits, Text
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


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,255}$"
CIPHERTEXT_PATTERN = r"^enc:[A-Za-z0-9_=\-]+$"
PUBLISHABLE_KEY_PATTERN = r"^pk_[A-Za-z0-9_]{4,255}$"
PAYMENT_METHOD_PATTERN = r"^(pm|card|src)_[A-Za-z0-9_]{1,250}$"
OFFLINE_METHODS = ("bank_transfer", "cash", "check", "pos", "other")


# --- commands ---------------------------------------------------------------------------


class StripeSettingsData(_Model):
    """A tenant's Stripe account. Secrets are ciphertexts made by the ingress."""

    secret_key: str = Field(pattern=CIPHERTEXT_PATTERN, description="Encrypted sk_…")
    webhook_secret: str = Field(pattern=CIPHERTEXT_PATTERN, description="Encrypted whsec_…")
    auto_collection: bool = True
    endpoint_token: str = Field(
        pattern=r"^[A-Za-z0-9_\-]{16,64}$",
        description="Path token of this tenant's inbound Stripe webhook URL",
    )
    publishable_key: str | None = Field(
        default=None,
        pattern=PUBLISHABLE_KEY_PATTERN,
        description="pk_…: Stripe.js collects cards with it on the hosted invoice page and "
        "the portal (public; none: those pages offer no card form)",
    )


class ConfigureStripe(CloudEvent):
    type: Literal["payments.configure_stripe"] = "payments.configure_stripe"
    data: StripeSettingsData


class CustomerSyncData(_Model):
    customer: str = Field(pattern=CUSTOMER_PATTERN, description="The customer's external_id")
    email: Line | None = Field(default=None, max_length=320)
    name: Line | None = Field(default=None, max_length=256)


class SyncCustomer(CloudEvent):
    type: Literal["payments.sync_customer"] = "payments.sync_customer"
    data: CustomerSyncData


class PaymentMethodData(_Model):
    customer: str = Field(pattern=CUSTOMER_PATTERN)
    payment_method: str = Field(pattern=PAYMENT_METHOD_PATTERN)
    create_customer: bool = Field(
        default=False,
        description="Create the customer in Stripe first if it is not there yet (the "
        "portal); otherwise a customer not synced to Stripe fails the command",
    )


class AttachPaymentMethod(CloudEvent):
    type: Literal["payments.attach_payment_method"] = "payments.attach_payment_method"
    data: PaymentMethodData


class RefundSpec(_Model):
    refund_id: Line = Field(min_length=1, max_length=64, description="Chosen by the ingress")
    payment_id: Line = Field(min_length=1, max_length=128)
    amount: PositiveMinorUnits | None = Field(
        default=None, description="Minor units; none = the rest"
    )
    reason: Text | None = Field(default=None, max_length=500)


class RefundPayment(CloudEvent):
    type: Literal["payments.refund"] = "payments.refund"
    data: RefundSpec


class OfflinePaymentSpec(_Model):
    payment_id: Line = Field(min_length=1, max_length=128, description="Chosen by the ingress")
    invoice_id: Line = Field(min_length=1, max_length=64)
    customer: str = Field(pattern=CUSTOMER_PATTERN)
    amount: PositiveMinorUnits = Field(description="Minor units of currency")
    currency: CurrencyCode
    method: Literal["bank_transfer", "cash", "check", "pos", "other"]
    reference: Line | None = Field(default=None, max_length=256)


class RecordOfflinePayment(CloudEvent):
    type: Literal["payments.record_offline"] = "payments.record_offline"
    data: OfflinePaymentSpec


class PayInvoiceSpec(_Model):
    """A customer paying one invoice by card on its hosted page (docs/documents.md)."""

    invoice_id: Line = Field(min_length=1, max_length=64)
    customer: str = Field(pattern=CUSTOMER_PATTERN, description="The customer's external_id")
    payment_method: str = Field(
        pattern=PAYMENT_METHOD_PATTERN, description="Collected by Stripe.js on the page"
    )
    amount: PositiveMinorUnits = Field(
        description="The invoice's amount due when the customer pressed Pay, minor units"
    )
    currency: CurrencyCode
    email: Line | None = Field(default=None, max_length=320)
    name: Line | None = Field(default=None, max_length=256)


class PayInvoice(CloudEvent):
    """Charge an invoice now with the card the customer just entered: the card is attached
    (the customer created in Stripe first if needed) and made the default, and the
    invoice's collection is due at once (opened for ``amount`` if it had none); the
    collector charges it as it charges every invoice. A collection already in flight or
    settled is left alone, so pressing Pay twice charges once."""

    type: Literal["payments.pay_invoice"] = "payments.pay_invoice"
    data: PayInvoiceSpec


PaymentsCommand = Annotated[
    ConfigureStripe
    | SyncCustomer
    | AttachPaymentMethod
    | RefundPayment
    | RecordOfflinePayment
    | PayInvoice,
    Field(discriminator="type"),
]


# --- events -----------------------------------------------------------------------------


class PaymentFailureData(_Model):
    payment_id: str = Field(min_length=1, max_length=128)
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str
    amount: int = Field(gt=0)
    currency: CurrencyCode
    attempt: int = Field(ge=1)
    failure_code: str | None = None
    failure_message: str | None = None
    next_attempt_at: datetime | None = Field(
        default=None, description="When dunning retries; none after the last attempt"
    )


class PaymentFailed(CloudEvent):
    type: Literal["payment.failed"] = "payment.failed"
    data: PaymentFailureData


class RefundData(_Model):
    refund_id: str = Field(min_length=1, max_length=128)
    payment_id: str = Field(min_length=1, max_length=128)
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str
    amount: int = Field(gt=0, description="This refund, minor units")
    amount_refunded: int = Field(gt=0, description="All refunds of the payment so far")
    currency: CurrencyCode


class PaymentRefunded(CloudEvent):
    type: Literal["payment.refunded"] = "payment.refunded"
    data: RefundData


class DisputeData(_Model):
    dispute_id: str = Field(min_length=1, max_length=128)
    payment_id: str = Field(min_length=1, max_length=128)
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str
    amount: int = Field(ge=0)
    currency: CurrencyCode
    reason: str | None = None


class PaymentDisputed(CloudEvent):
    type: Literal["payment.disputed"] = "payment.disputed"
    data: DisputeData


class DunningData(_Model):
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str
    amount: int = Field(gt=0)
    currency: CurrencyCode
    attempts: int = Field(ge=1)


class DunningExhausted(CloudEvent):
    type: Literal["payment.dunning_exhausted"] = "payment.dunning_exhausted"
    data: DunningData


PaymentEvent = Annotated[
    PaymentSucceeded | PaymentFailed | PaymentRefunded | PaymentDisputed | DunningExhausted,
    Field(discriminator="type"),
]
"""Every event on ``billstream.events.payments.v1``."""


# --- Stripe webhooks, verified by the ingress -------------------------------------------


class StripeEventData(_Model):
    """A Stripe event as Stripe sent it (``id`` evt_…, ``type``, ``data.object``)."""

    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=255)
    created: int
    object: dict[str, Any] = Field(description="The event's data.object")
    previous_attributes: dict[str, Any] | None = None


class StripeEventReceived(CloudEvent):
    """Its ``id`` is the Stripe event id, so a resent Stripe event is applied once."""

    type: Literal["stripe.event_received"] = "stripe.event_received"
    data: StripeEventData


COMMANDS: tuple[type[CloudEvent], ...] = (
    ConfigureStripe,
    SyncCustomer,
    AttachPaymentMethod,
    RefundPayment,
    RecordOfflinePayment,
    PayInvoice,
)
EVENTS: tuple[type[CloudEvent], ...] = (
    PaymentSucceeded,
    PaymentFailed,
    PaymentRefunded,
    PaymentDisputed,
    DunningExhausted,
)
INTEGRATION_EVENTS: tuple[type[CloudEvent], ...] = (StripeEventReceived,)

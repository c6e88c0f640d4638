"""Payments API: Stripe settings, customer sync, payment methods, refunds, offline payments,
an invoice's payments, and the inbound Stripe webhook endpoint.

Writes are commands on ``billstream.commands.payments.v1`` (202 + command id). Stripe
secrets are encrypted here, before they are published; no response, log or message
carries them in clear. Stripe webhooks are verified on the raw body, deduplicated by
Stripe event id and published to ``billstream.integrations.stripe.v1``.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import topics
from schemas.bounds import ID_PATTERN
from schemas.envelope import new_id
from schemas.payments import (
    CUSTOMER_PATTERN,
    PUBLISHABLE_KEY_PATTERN,
    AttachPaymentMethod,
    ConfigureStripe,
    CustomerSyncData,
    OfflinePaymentSpec,
    PaymentMethodData,
    RecordOfflinePayment,
    RefundPayment,
    RefundSpec,
    StripeEventData,
    StripeEventReceived,
    StripeSettingsData,
    SyncCustomer,
)
from schemas.topics import partition_key
from storage.invoicing import InvoicingRepository
from storage.payments import PaymentsRepository
from workers import payments
from workers.ingress.deps import State, Tenant, Unit, read_body
from workers.ingress.fields import Amount, Text
from workers.ingress.problems import Problem, invalid, not_found
from workers.ingress.routes import CommandAccepted, envelope, submit
from workers.payments import StripeSettingsView

router = APIRouter(prefix="/v1", tags=["payments"])
log = structlog.get_logger("billstream.ingress.payments")

_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}
CustomerPath = Annotated[str, Path(pattern=CUSTOMER_PATTERN)]
InvoiceIdPath = Annotated[str, Path(pattern=ID_PATTERN)]
PaymentIdPath = Annotated[str, Path(min_length=1, max_length=128)]
STRIPE_SOURCE = "billstream/ingress/stripe"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StripeSettingsIn(_In):
    secret_key: str = Field(pattern=r"^(sk|rk)_[A-Za-z0-9_]{4,255}$", repr=False)
    webhook_secret: str = Field(pattern=r"^whsec_[A-Za-z0-9_+/=]{4,255}$", repr=False)
    auto_collection: bool = True
    publishable_key: str | None = Field(
        default=None,
        pattern=PUBLISHABLE_KEY_PATTERN,
        description="pk_…: lets the hosted invoice page and the portal take cards "
        "(Stripe.js); without it they offer no card form",
    )


class CustomerSyncIn(_In):
    email: Text | None = Field(default=None, max_length=320)
    name: Text | None = Field(default=None, max_length=256)


class PaymentMethodIn(_In):
    payment_method: str = Field(pattern=r"^(pm|card|src)_[A-Za-z0-9_]{1,250}$")


class RefundIn(_In):
    amount: Amount | None = Field(default=None, description="Minor units; omit for the rest")
    reason: Text | None = Field(default=None, max_length=500)


class OfflinePaymentIn(_In):
    amount: Amount = Field(description="Minor units of the invoice's currency")
    method: Literal["bank_transfer", "cash", "check", "pos", "other"]
    reference: Text | None = Field(default=None, max_length=256)


# An invoice's payments as the API shows them. They stay here: another API model is named
# PaymentView (invoicing's), so OpenAPI names both by module path, and this one's published
# component name is workers__ingress__payments__PaymentView.
class PaymentView(BaseModel):
    id: str
    invoice_id: str
    customer: str
    amount: int
    currency: str
    method: str
    attempt: int | None
    state: str
    failure_code: str | None
    failure_message: str | None
    amount_refunded: int
    disputed: bool
    reference: str | None
    created_at: datetime


class CollectionView(BaseModel):
    status: str
    attempts: int
    next_attempt_at: datetime | None


class InvoicePaymentsView(BaseModel):
    invoice_id: str
    collection: CollectionView | None
    payments: list[PaymentView]


def _no_key() -> Problem:
    return Problem(
        503,
        "secrets_key_missing",
        "Stripe secrets cannot be stored",
        "the operator must set BILLSTREAM_SECRETS_KEY",
    )


async def _send(
    request: Request,
    st: State,
    tenant_id: str,
    event: Any,
    key: str,
    extra: dict[str, Any] | None = None,
) -> Response:
    return await submit(
        request,
        st,
        tenant_id,
        event,
        topic=topics.COMMANDS_PAYMENTS,
        key=key,
        extra=extra,
    )


# --- Stripe settings -------------------------------------------------------------------


@router.put(
    "/integrations/stripe", summary="Set the tenant's Stripe account (command)", **_ACCEPTED
)
async def configure_stripe(
    request: Request, spec: StripeSettingsIn, st: State, tx: Unit, tenant_id: Tenant
) -> Response:
    """Secrets are encrypted before they leave the ingress and are never shown again. The
    answer names the webhook path to register in Stripe (it stays the same on updates)."""
    existing = await tx.repo(PaymentsRepository).account(tenant_id)
    token = existing.endpoint_token if existing else pysecrets.token_urlsafe(24)
    try:
        data = StripeSettingsData(
            secret_key=payments.encrypt_secret(st.settings, spec.secret_key),
            webhook_secret=payments.encrypt_secret(st.settings, spec.webhook_secret),
            auto_collection=spec.auto_collection,
            endpoint_token=token,
            publishable_key=spec.publishable_key,
        )
    except payments.SecretsKeyMissing:
        raise _no_key() from None
    command = ConfigureStripe(data=data, **envelope(request, tenant_id, "stripe"))
    extra = {"webhook_path": payments.webhook_path(token)}
    return await _send(request, st, tenant_id, command, partition_key(tenant_id), extra)


@router.get("/integrations/stripe", response_model=StripeSettingsView, summary="Stripe settings")
async def stripe_settings(tx: Unit, tenant_id: Tenant) -> StripeSettingsView:
    return payments.stripe_settings(await tx.repo(PaymentsRepository).account(tenant_id))


# --- customers and payment methods ---------------------------------------------------------


@router.post(
    "/customers/{customer}/stripe", summary="Create the customer in Stripe (command)", **_ACCEPTED
)
async def sync_customer(
    request: Request, customer: CustomerPath, spec: CustomerSyncIn, st: State, tenant_id: Tenant
) -> Response:
    data = CustomerSyncData(customer=customer, email=spec.email, name=spec.name)
    command = SyncCustomer(data=data, **envelope(request, tenant_id, customer))
    key = partition_key(tenant_id, customer)
    return await _send(request, st, tenant_id, command, key)


@router.post(
    "/customers/{customer}/payment-methods",
    summary="Attach a Stripe payment method and make it the default (command)",
    **_ACCEPTED,
)
async def attach_payment_method(
    request: Request, customer: CustomerPath, spec: PaymentMethodIn, st: State, tenant_id: Tenant
) -> Response:
    data = PaymentMethodData(customer=customer, payment_method=spec.payment_method)
    command = AttachPaymentMethod(data=data, **envelope(request, tenant_id, customer))
    key = partition_key(tenant_id, customer)
    return await _send(request, st, tenant_id, command, key)


# --- payments, refunds, offline payments ---------------------------------------------------


@router.get(
    "/invoices/{invoice_id}/payments",
    response_model=InvoicePaymentsView,
    summary="An invoice's collection and payments",
)
async def invoice_payments(
    invoice_id: InvoiceIdPath, tx: Unit, tenant_id: Tenant
) -> InvoicePaymentsView:
    """404 for an invoice this tenant does not have (yet), like every other invoice route."""
    repo = tx.repo(PaymentsRepository)
    collection = await repo.collection(tenant_id, invoice_id)
    rows = await repo.payments_of_invoice(tenant_id, invoice_id)
    if (
        collection is None
        and not rows
        and await tx.repo(InvoicingRepository).invoice(tenant_id, invoice_id) is None
    ):
        raise not_found("invoice", invoice_id)
    return InvoicePaymentsView(
        invoice_id=invoice_id,
        collection=CollectionView.model_validate(collection, from_attributes=True)
        if collection
        else None,
        payments=[PaymentView.model_validate(p, from_attributes=True) for p in rows],
    )


@router.post(
    "/payments/{payment_id}/refunds",
    summary="Refund a payment, fully or partly (command)",
    **_ACCEPTED,
)
async def refund_payment(
    request: Request,
    payment_id: PaymentIdPath,
    spec: RefundIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    payment = await tx.repo(PaymentsRepository).payment(tenant_id, payment_id)
    if payment is None:
        raise not_found("payment", payment_id)
    refund_id = f"ref_{new_id()}"
    data = RefundSpec(
        refund_id=refund_id, payment_id=payment_id, amount=spec.amount, reason=spec.reason
    )
    command = RefundPayment(data=data, **envelope(request, tenant_id, payment.invoice_id))
    key = partition_key(tenant_id, payment.customer)
    return await _send(request, st, tenant_id, command, key, {"refund_id": refund_id})


@router.post(
    "/invoices/{invoice_id}/offline-payments",
    summary="Record a payment made outside Stripe: bank transfer, cash, POS (command)",
    **_ACCEPTED,
)
async def record_offline_payment(
    request: Request,
    invoice_id: InvoiceIdPath,
    spec: OfflinePaymentIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Checked against the invoice as it is when the request arrives: a draft or void
    invoice takes no payment (409), and none may exceed what is still due (422)."""
    repo = tx.repo(InvoicingRepository)
    invoice = await repo.invoice(tenant_id, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id)
    if invoice.status in ("draft", "void"):
        detail = f"invoice {invoice_id!r} is {invoice.status}: it cannot take payments"
        raise Problem(409, "invoice_not_payable", "The invoice cannot take payments", detail)
    due = max(invoice.total - invoice.amount_paid - invoice.amount_credited, 0)
    if spec.amount > due:
        why = f"exceeds the invoice's amount due ({due} in minor units of {invoice.currency})"
        raise invalid(f"amount {why}", [{"field": "amount", "reason": why}])
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    payment_id = f"pay_{new_id()}"
    data = OfflinePaymentSpec(
        payment_id=payment_id,
        invoice_id=invoice_id,
        customer=customer.external_id,
        amount=spec.amount,
        currency=invoice.currency,
        method=spec.method,
        reference=spec.reference,
    )
    command = RecordOfflinePayment(data=data, **envelope(request, tenant_id, invoice_id))
    key = partition_key(tenant_id, customer.external_id)
    return await _send(request, st, tenant_id, command, key, {"payment_id": payment_id})


# --- inbound Stripe webhooks ---------------------------------------------------------------


class StripeReceived(BaseModel):
    received: bool
    duplicate: bool


def _bad_signature(detail: str) -> Problem:
    return Problem(400, "invalid_signature", "Invalid Stripe signature", detail)


@router.post(
    "/integrations/stripe/{token}",
    summary="Inbound Stripe webhook (signed by Stripe; no API key)",
    response_model=StripeReceived,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A Stripe event, exactly as Stripe sends it (verified on the raw "
            "bytes with Stripe-Signature).",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def stripe_webhook(
    request: Request,
    token: Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{16,64}$")],
    st: State,
    tx: Unit,
) -> Response:
    """Verifies ``Stripe-Signature`` on the raw body (5 minutes tolerance, any ``v1``
    signature made with the current or the previous signing secret); 400 and nothing
    published otherwise. A Stripe event id already accepted answers 200 ``duplicate``."""
    body = await read_body(request, st.settings.max_request_bytes)
    account = await tx.repo(PaymentsRepository).account_by_token(token)
    if account is None:
        raise Problem(404, "not_found", "No such endpoint", "unknown Stripe endpoint")
    tenant_id = account.tenant_id
    structlog.contextvars.bind_contextvars(tenantid=tenant_id)
    try:
        keys = payments.webhook_secrets(
            st.settings, account.webhook_secret, account.previous_webhook_secret
        )
    except payments.SecretsKeyMissing:
        raise _no_key() from None
    try:
        signature = request.headers.get("stripe-signature")
        payments.verify_stripe_signature(body, signature, keys, now=time.time())
    except payments.SignatureError as e:
        log.warning("Stripe webhook refused", reason=str(e))
        raise _bad_signature(str(e)) from None
    try:
        payload = json.loads(body)
        obj = payload["data"]["object"]
        data = StripeEventData(
            id=payload["id"],
            type=payload["type"],
            created=payload["created"],
            object=obj,
            previous_attributes=payload["data"].get("previous_attributes"),
        )
    except (ValueError, KeyError, TypeError, ValidationError):
        raise Problem(
            400, "invalid_event", "Not a Stripe event", "expected id, type, created, data.object"
        ) from None
    event = StripeEventReceived(
        id=data.id, source=STRIPE_SOURCE, tenantid=tenant_id, subject=data.type, data=data
    )
    customer = obj.get("customer") if isinstance(obj.get("customer"), str) else None
    key = partition_key(tenant_id, str(customer or obj.get("id", "")))
    async with st.jobs.transaction("ingress.stripe") as once:  # published once per Stripe event
        if not await once.repo(PaymentsRepository).first_sighting(tenant_id, data.id, data.type):
            return JSONResponse({"received": True, "duplicate": True})
        await st.publisher.publish(topics.INTEGRATIONS_STRIPE, [(key.encode(), event.to_json())])
    return JSONResponse({"received": True, "duplicate": False})

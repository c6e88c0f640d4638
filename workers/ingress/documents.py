"""Documents' API routes (docs/documents.md): the tenant's branding, an invoice's PDF and
hosted link, portal sessions.

- ``PUT /v1/branding`` publishes a ``ConfigureBranding`` command on
  ``billstream.commands.documents.v1`` (202 + command id); ``GET /v1/branding`` reads the
  current one. Until one is set it answers the default every invoice is rendered with: the
  tenant's name as the seller, the rest absent (never a 404).
- ``GET /v1/invoices/{invoice_id}/pdf`` serves the PDF rendered at finalization: immutable,
  so it carries its SHA-256 as ``ETag`` (``If-None-Match`` → 304) and may be cached. 404 for
  an invoice that is not the tenant's, 409 ``invoice_not_finalized`` for a draft, 503
  ``document_pending`` with ``Retry-After: 1`` in the moments between finalization and the
  documents worker storing it.
- ``POST /v1/invoices/{invoice_id}/hosted-link`` and ``POST /v1/portal/sessions`` sign a new
  link each call (nothing is stored, so ``Idempotency-Key`` does not apply). Links are signed
  with keys derived from ``BILLSTREAM_SECRETS_KEY``: without it, 503 ``secrets_key_missing``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Request
from fastapi.responses import JSONResponse, Response

from schemas import topics
from schemas.documents import (
    Branding,
    ConfigureBranding,
    HostedLink,
    HostedLinkSpec,
    PortalSession,
    PortalSessionSpec,
)
from storage.documents import PDF, DocumentRepository
from storage.invoicing.repository import InvoicingRepository
from workers import documents
from workers.ingress.deps import IngressState, State, Tenant, Unit
from workers.ingress.problems import Problem, not_found
from workers.ingress.routes import CommandAccepted, send_command
from workers.runtime.tx import Tx

router = APIRouter(tags=["documents"])

#: a PDF never changes once rendered: caches may keep it (privately: it is the tenant's)
PDF_MAX_AGE_S = 31_536_000
PENDING_RETRY_AFTER_S = 1
KEY_RETRY_AFTER_S = 30

InvoicePath = Annotated[str, Path(max_length=64, description="The invoice's id.")]

_send = functools.partial(send_command, topic=topics.COMMANDS_DOCUMENTS)
"""``send_command`` on billstream.commands.documents.v1."""


def _keys(st: IngressState) -> list[bytes]:
    secret = st.settings.secrets_key.get_secret_value() if st.settings.secrets_key else None
    try:
        return documents.signing_keys(secret)
    except documents.SecretsKeyMissing:
        raise Problem(
            503,
            "secrets_key_missing",
            "Links cannot be signed",
            "the operator must set BILLSTREAM_SECRETS_KEY (links are signed with keys "
            "derived from it)",
            headers={"Retry-After": str(KEY_RETRY_AFTER_S)},
        ) from None


def _not_finalized(invoice_id: str) -> Problem:
    return Problem(
        409,
        "invoice_not_finalized",
        "The invoice is a draft",
        f"invoice {invoice_id!r} is a draft: its PDF and hosted page exist once it is finalized",
    )


async def _current_branding(tx: Tx, tenant_id: str) -> Branding:
    repo = tx.repo(DocumentRepository)
    names = await repo.tenant_names([tenant_id])
    return documents.branding(await repo.branding(tenant_id), names.get(tenant_id, tenant_id))


def _json(model: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


# --- branding --------------------------------------------------------------------------------


@router.put(
    "/v1/branding",
    status_code=202,
    response_model=CommandAccepted,
    summary="Set the tenant's branding (command)",
)
async def put_branding(request: Request, body: Branding, st: State, tenant_id: Tenant) -> Response:
    """Publishes a ``ConfigureBranding`` command. The branding is replaced whole (what is
    left out is cleared). Invoices rendered before keep theirs; invoices finalized after it
    applies show this one. A ``logo`` is a data URL of a PNG or JPEG image of at most
    256 KiB (422 naming ``logo`` and why otherwise)."""
    return await _send(
        request,
        st,
        tenant_id,
        ConfigureBranding,
        body,
        key=topics.partition_key(tenant_id),
        subject="branding",
    )


@router.get("/v1/branding", response_model=Branding, summary="The tenant's branding")
async def get_branding(tx: Unit, tenant_id: Tenant) -> Response:
    """The branding set last by ``PUT /v1/branding``; until one is, the default every
    invoice is rendered with: the tenant's name as the seller and nothing else."""
    return _json(await _current_branding(tx, tenant_id))


# --- an invoice's PDF ------------------------------------------------------------------------


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/v1/invoices/{invoice_id}/pdf",
    response_class=Response,
    summary="An invoice's PDF, rendered at finalization",
    responses={
        200: {
            "description": "The PDF (the same bytes every time)",
            "content": {PDF: {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "ETag": {
                    "required": True,
                    "description": '"<sha256 of the bytes>"',
                    "schema": {"type": "string"},
                },
                "Content-Disposition": {
                    "required": True,
                    "description": 'inline; filename="<number>.pdf"',
                    "schema": {"type": "string"},
                },
                "Cache-Control": {
                    "required": True,
                    "description": f"private, max-age={PDF_MAX_AGE_S}, immutable",
                    "schema": {"type": "string"},
                },
            },
        },
        304: {
            "description": "Not modified: If-None-Match names the PDF's ETag",
            "headers": {"ETag": {"required": True, "schema": {"type": "string"}}},
        },
    },
)
async def get_invoice_pdf(
    invoice_id: InvoicePath,
    tx: Unit,
    tenant_id: Tenant,
    if_none_match: Annotated[
        str | None,
        Header(max_length=1024, description="An ETag this answered before: 304 if unchanged."),
    ] = None,
) -> Response:
    """The invoice as its customer was handed it: rendered once, when it was finalized, in
    the tenant's branding and the buyer's locale (its payment status is the one at
    finalization; the hosted page shows the live one). 409 ``invoice_not_finalized`` for a
    draft; 503 ``document_pending`` (``Retry-After: 1``) in the moments after finalization
    before it is stored."""
    found = await tx.repo(DocumentRepository).invoice_pdf(tenant_id, invoice_id)
    if found is None:
        invoice = await tx.repo(InvoicingRepository).invoice(tenant_id, invoice_id)
        if invoice is None:
            raise not_found("invoice", invoice_id)
        if invoice.status == "draft" or invoice.number is None:
            raise _not_finalized(invoice_id)
        raise Problem(
            503,
            "document_pending",
            "The PDF is being rendered",
            f"invoice {invoice_id!r} was finalized moments ago; its PDF follows shortly",
            headers={"Retry-After": str(PENDING_RETRY_AFTER_S)},
        )
    document, content = found
    etag = documents.etag(document)
    cache = f"private, max-age={PDF_MAX_AGE_S}, immutable"
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    disposition = f'inline; filename="{documents.pdf_filename(document)}"'
    return Response(
        content,
        media_type=PDF,
        headers={"ETag": etag, "Cache-Control": cache, "Content-Disposition": disposition},
    )


# --- links -----------------------------------------------------------------------------------


@router.post(
    "/v1/invoices/{invoice_id}/hosted-link",
    status_code=201,
    response_model=HostedLink,
    summary="A new signed link to the invoice's hosted page",
)
async def create_hosted_link(
    invoice_id: InvoicePath,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
    body: Annotated[HostedLinkSpec | None, Body()] = None,
) -> Response:
    """The page shows the invoice and its live state, lets the customer pay it and download
    its PDF; no API key is needed to open it. Valid ``expires_in_days`` (default: the
    branding's ``hosted_link_days``). Each call signs a new link; one cannot be revoked
    before it expires. 409 ``invoice_not_finalized`` for a draft."""
    keys = _keys(st)
    invoice = await tx.repo(InvoicingRepository).invoice(tenant_id, invoice_id)
    if invoice is None:
        raise not_found("invoice", invoice_id)
    if invoice.status == "draft" or invoice.number is None:
        raise _not_finalized(invoice_id)
    branding = await _current_branding(tx, tenant_id)
    document = await tx.repo(DocumentRepository).invoice_document(tenant_id, invoice_id)
    if document is not None:
        locale = document.locale
    else:
        customers = await tx.repo(InvoicingRepository).customers([invoice.customer_id])
        customer = customers.get(invoice.customer_id)
        locale = (customer.locale if customer else None) or branding.default_locale
    days = (body or HostedLinkSpec()).expires_in_days or branding.hosted_link_days
    expires = (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)
    link = documents.Link("invoice", tenant_id, invoice_id, expires, locale)
    url = documents.link_url(st.settings.public_base_url, keys, link)
    return _json(HostedLink(invoice_id=invoice_id, url=url, expires_at=expires), 201)


@router.post(
    "/v1/portal/sessions",
    status_code=201,
    response_model=PortalSession,
    summary="A short-lived customer portal session for one customer",
)
async def create_portal_session(
    spec: PortalSessionSpec, st: State, tx: Unit, tenant_id: Tenant
) -> Response:
    """Hand ``url`` to the customer (redirect them to it): the portal shows that customer's
    invoices with their PDFs, usage this period, credit balance, entitlements and
    subscription, and lets them update their payment method. It sees that customer's data
    only, until ``expires_at`` (``expires_in`` seconds, default an hour, at most a day).
    ``locale`` defaults to the customer's, then the branding's ``default_locale``. 404
    naming ``customer`` for an unknown customer."""
    keys = _keys(st)
    customer = await tx.repo(InvoicingRepository).customer(tenant_id, spec.customer, lock=False)
    if customer is None:
        raise Problem(
            404,
            "not_found",
            "No such customer",
            f"no customer {spec.customer!r}",
            errors=[{"field": "customer", "reason": f"no customer {spec.customer!r}"}],
        )
    locale = spec.locale or customer.locale
    if locale is None:
        locale = (await _current_branding(tx, tenant_id)).default_locale
    expires = (datetime.now(UTC) + timedelta(seconds=spec.expires_in)).replace(microsecond=0)
    link = documents.Link("portal", tenant_id, spec.customer, expires, locale, spec.return_url)
    url = documents.link_url(st.settings.public_base_url, keys, link)
    return _json(PortalSession(customer=spec.customer, url=url, expires_at=expires), 201)

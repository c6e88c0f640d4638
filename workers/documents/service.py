"""Documents' domain logic, pure: which branding and locale an invoice is rendered in, the
hosted-page link printed on it, and the ``document.rendered`` event. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.documents import Branding, DocumentData, DocumentRendered
from schemas.invoicing import InvoiceData, InvoiceFinalized
from schemas.locales import Locale
from workers.documents.errors import SecretsKeyMissing
from workers.documents.links import Link, link_keys

SOURCE = "billstream/documents"
DEFAULT_LOCALE: Locale = "en"


def signing_keys(secrets_key: str | None) -> list[bytes]:
    """The link signing keys of ``BILLSTREAM_SECRETS_KEY``; SecretsKeyMissing, naming the
    setting, when it holds none."""
    keys = link_keys(secrets_key or "")
    if not keys:
        raise SecretsKeyMissing(
            "BILLSTREAM_SECRETS_KEY is not set: hosted invoice and portal links are signed "
            "with keys derived from it"
        )
    return keys


def pdf_url(invoice_id: str) -> str:
    """Where an invoice's PDF is served (with the tenant's API key)."""
    return f"/v1/invoices/{invoice_id}/pdf"


def branding_of(spec: dict[str, Any] | None, tenant_name: str) -> Branding:
    """The tenant's branding as set by ``ConfigureBranding``, or one that only names the
    seller (the tenant's name) until it is set. ValidationError for a stored spec that no
    longer validates."""
    if spec is None:
        return Branding(name=tenant_name or "—")
    return Branding.model_validate(spec)


def locale_of(invoice: InvoiceData, branding: Branding) -> Locale:
    """The buyer's own locale, else the tenant's default, else English."""
    if invoice.buyer is not None and invoice.buyer.locale is not None:
        return invoice.buyer.locale
    return branding.default_locale or DEFAULT_LOCALE


@dataclass(frozen=True)
class Job:
    """What rendering one finalized invoice takes, all decided before it is rendered."""

    tenant_id: str
    invoice: InvoiceData
    branding: Branding
    locale: Locale
    link: Link  # of the hosted page, printed on the PDF
    rendered_at: datetime  # the finalization's time: a replay renders the same bytes


def job(event: InvoiceFinalized, branding: Branding) -> Job:
    """Render ``event``'s invoice in ``branding``: the hosted link stays valid
    ``branding.hosted_link_days`` from the finalization (whole seconds, as it is signed)."""
    invoice = event.data
    locale = locale_of(invoice, branding)
    expires = (event.time + timedelta(days=branding.hosted_link_days)).replace(microsecond=0)
    link = Link("invoice", event.tenantid, invoice.invoice_id, expires, locale)
    return Job(event.tenantid, invoice, branding, locale, link, event.time)


def rendered(
    j: Job, event: InvoiceFinalized, *, sha256: str, size: int, hosted_url: str
) -> DocumentRendered:
    """``document.rendered`` for a document stored for the first time."""
    data = DocumentData(
        invoice_id=j.invoice.invoice_id,
        number=j.invoice.number,
        customer=j.invoice.customer,
        sha256=sha256,
        size=size,
        locale=j.locale,
        rendered_at=j.rendered_at,
        pdf_url=pdf_url(j.invoice.invoice_id),
        hosted_url=hosted_url,
        hosted_url_expires_at=j.link.expires_at,
    )
    return DocumentRendered(
        source=SOURCE,
        tenantid=j.tenant_id,
        subject=j.invoice.invoice_id,
        correlationid=event.correlationid or event.id,
        causationid=event.id,
        data=data,
    )

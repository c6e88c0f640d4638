"""Documents' rows → contracts: what the ingress and the pages import (through the face)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.documents import Branding
from storage.documents import BrandingRow, InvoiceDocument
from workers.documents import service
from workers.documents.links import Link, link_url


def branding(row: BrandingRow | None, tenant_name: str) -> Branding:
    """The tenant's branding, or the default (only the seller's name, the tenant's) until
    one is set."""
    return service.branding_of(row.spec if row is not None else None, tenant_name)


def etag(document: InvoiceDocument) -> str:
    """The PDF's entity tag: the SHA-256 of its bytes, quoted."""
    return f'"{document.sha256}"'


def hosted_link(document: InvoiceDocument) -> Link:
    """The hosted-page link printed on the invoice's PDF."""
    return Link(
        "invoice",
        document.tenant_id,
        document.invoice_id,
        document.hosted_expires_at,
        document.locale,
    )


def hosted_url(base_url: str, keys: Sequence[bytes], document: InvoiceDocument) -> str:
    """The URL printed on the PDF (signing is deterministic: the same link, the same URL)."""
    return link_url(base_url, keys, hosted_link(document))


def pdf_filename(document: InvoiceDocument) -> str:
    """``<number>.pdf`` (the invoice id before it has one), safe in a quoted header."""
    stem = document.number or document.invoice_id
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) + ".pdf"

"""Documents commands (``billstream.commands.documents.v1``) and events
(``billstream.events.documents.v1``): what a customer is handed (docs/documents.md).

Every finalized invoice is rendered once, to a PDF stored under the SHA-256 of its bytes,
in the tenant's branding and the buyer's locale; ``document.rendered`` says where it is and
carries a signed, expiring link to the invoice's hosted page. The tenant's branding is set
by ``ConfigureBranding``; the hosted page and the customer portal are served by the ingress.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.bounds import EXTERNAL_ID_PATTERN, Line, Text, optional_line
from schemas.envelope import CloudEvent
from schemas.invoicing import Address
from schemas.locales import Locale

MAX_LOGO_BYTES = 256 * 1024
LOGO_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- commands -------------------------------------------------------------------------------


class Branding(_Model):
    """How the tenant appears on its documents and pages. Each field is optional but the
    seller's name; what is absent is left off the document."""

    name: Line = Field(min_length=1, max_length=256, description="The seller's legal name")
    address: Address | None = None
    tax_id: Line | None = Field(
        default=None, max_length=64, description="The seller's tax ID as printed (NPWP, VAT …)"
    )
    email: Line | None = Field(default=None, max_length=320, description="Billing contact")
    website: Line | None = Field(default=None, max_length=256)
    logo: str | None = Field(
        default=None,
        max_length=350_000,
        description="A data URL of a PNG or JPEG image, at most 256 KiB decoded: "
        "'data:image/png;base64,iVBOR…'",
    )
    accent_color: str = Field(
        default="#1F4FD1",
        pattern=r"^#[0-9A-Fa-f]{6}$",
        description="'#RRGGBB': headings and rules on documents and pages",
    )
    default_locale: Locale = Field(
        default="en", description="For buyers without a locale of their own"
    )
    footer: Text | None = Field(
        default=None, max_length=1024, description="Printed at the foot of every invoice"
    )
    hosted_link_days: int = Field(
        default=90,
        ge=1,
        le=365,
        description="How long the hosted-page link printed on an invoice stays valid",
    )

    _lines = field_validator("tax_id", "email", "website")(optional_line)

    @field_validator("logo")
    @classmethod
    def _logo(cls, v: str | None) -> str | None:
        if v is not None:
            logo_bytes(v)  # raises ValueError, saying why
        return v


def logo_bytes(data_url: str) -> tuple[str, bytes]:
    """The media type and bytes of a logo data URL; ValueError saying what is wrong."""
    head, sep, payload = data_url.partition(",")
    media = head.removeprefix("data:").removesuffix(";base64")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError("must be a base64 data URL: 'data:image/png;base64,…'")
    if media not in LOGO_TYPES:
        raise ValueError(f"must be one of {', '.join(sorted(LOGO_TYPES))}, not {media!r}")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if len(raw) > MAX_LOGO_BYTES:
        raise ValueError(f"is {len(raw)} bytes; at most {MAX_LOGO_BYTES} decoded")
    if not raw.startswith(LOGO_TYPES[media]):
        raise ValueError(f"is not a {media} image")
    return media, raw


class ConfigureBranding(CloudEvent):
    """Sets the tenant's branding (whole: what is absent is cleared). Documents rendered
    before keep theirs; documents rendered after show this."""

    type: Literal["ConfigureBranding"] = "ConfigureBranding"
    data: Branding


# --- events ---------------------------------------------------------------------------------


class DocumentData(_Model):
    kind: Literal["invoice"] = "invoice"
    invoice_id: str
    number: str | None = None
    customer: str
    sha256: str = Field(pattern=SHA256_PATTERN, description="Of the PDF's bytes: its address")
    size: int = Field(description="Bytes")
    locale: Locale
    rendered_at: datetime
    pdf_url: str = Field(description="GET it with the tenant's API key: /v1/invoices/{id}/pdf")
    hosted_url: str = Field(
        description="The invoice's hosted page (the link printed on the PDF): signed, "
        "unguessable, no API key needed"
    )
    hosted_url_expires_at: datetime


class DocumentRendered(CloudEvent):
    """An invoice's PDF was rendered and stored (once per invoice)."""

    type: Literal["document.rendered"] = "document.rendered"
    data: DocumentData


# --- API only (not on Kafka) ----------------------------------------------------------------


class HostedLinkSpec(_Model):
    expires_in_days: int | None = Field(
        default=None, ge=1, le=365, description="Default: the branding's hosted_link_days"
    )


class HostedLink(_Model):
    invoice_id: str
    url: str
    expires_at: datetime


class PortalSessionSpec(_Model):
    customer: str = Field(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id")
    expires_in: int = Field(
        default=3600, ge=60, le=86_400, description="Seconds the session's URL stays valid"
    )
    return_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s\x00-\x1f\x7f]+$",
        description="Where the portal's 'back' link leads (the tenant's app)",
    )
    locale: Locale | None = Field(default=None, description="Default: the customer's")


class PortalSession(_Model):
    customer: str
    url: str
    expires_at: datetime


COMMANDS: tuple[type[CloudEvent], ...] = (ConfigureBranding,)
EVENTS: tuple[type[CloudEvent], ...] = (DocumentRendered,)

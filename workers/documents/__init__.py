"""Documents: invoice PDFs rendered once at finalization in the tenant's branding and the
buyer's locale, stored by the SHA-256 of their bytes, and the signed links of hosted invoice
pages and portal sessions (docs/documents.md).

Its face: what other packages may import (an import-linter contract enforces it)."""

from workers.documents.errors import SecretsKeyMissing
from workers.documents.i18n import LABELS, PaymentState, label, payment_state
from workers.documents.links import (
    PATHS,
    Link,
    LinkError,
    Purpose,
    link_keys,
    link_url,
    sign,
    verify,
)
from workers.documents.money import (
    format_date,
    format_decimal,
    format_money,
    format_percent,
    format_period,
    format_price,
    format_quantity,
)
from workers.documents.render import RenderError, render_invoice_pdf
from workers.documents.sections import Section, section_customers, section_of, sections
from workers.documents.service import pdf_url, signing_keys
from workers.documents.views import branding, etag, hosted_link, hosted_url, pdf_filename

__all__ = [
    "LABELS",
    "PATHS",
    "Link",
    "LinkError",
    "PaymentState",
    "Purpose",
    "RenderError",
    "SecretsKeyMissing",
    "Section",
    "branding",
    "etag",
    "format_date",
    "format_decimal",
    "format_money",
    "format_percent",
    "format_period",
    "format_price",
    "format_quantity",
    "hosted_link",
    "hosted_url",
    "label",
    "link_keys",
    "link_url",
    "payment_state",
    "pdf_filename",
    "pdf_url",
    "render_invoice_pdf",
    "section_customers",
    "section_of",
    "sections",
    "sign",
    "signing_keys",
    "verify",
]

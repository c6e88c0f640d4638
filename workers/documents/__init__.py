"""Documents: invoice PDFs rendered once at finalization in the tenant's branding and the
buyer's locale, stored by the SHA-256 of their bytes, and the signed links of hosted invoice
pages and portal sessions (docs/documents.md).

Its face: what other packages may import (an import-linter contract enforces it)."""

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

__all__ = [
    "LABELS",
    "PATHS",
    "Link",
    "LinkError",
    "PaymentState",
    "Purpose",
    "RenderError",
    "format_date",
    "format_decimal",
    "format_money",
    "format_percent",
    "format_period",
    "format_price",
    "format_quantity",
    "label",
    "link_keys",
    "link_url",
    "payment_state",
    "render_invoice_pdf",
    "sign",
    "verify",
]

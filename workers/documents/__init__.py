"""Documents: invoice PDFs rendered once at finalization in the tenant's branding and the
buyer's locale, stored by the SHA-256 of their bytes, and the signed links of hosted invoice
pages and portal sessions (docs/documents.md).

Its face: what other packages may import (an import-linter contract enforces it)."""

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

__all__ = ["PATHS", "Link", "LinkError", "Purpose", "link_keys", "link_url", "sign", "verify"]

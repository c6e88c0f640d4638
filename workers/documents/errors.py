from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError


class DocumentsError(BillstreamError):
    code = "documents_error"


class SecretsKeyMissing(DocumentsError, RuntimeError):
    """The worker signs hosted-page links with keys derived from BILLSTREAM_SECRETS_KEY."""

    code = "secrets_key_missing"


class RenderFailed(DocumentsError, PermanentError):
    """The invoice's PDF could not be rendered (its data, or the tenant's branding): the
    ``invoice.finalized`` is dead-lettered; a redrive after the fix renders it."""

    code = "render_failed"

from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError, RetryableError


class WebhooksError(BillstreamError):
    code = "webhooks_error"


class WebhooksRetryableError(WebhooksError, RetryableError):
    pass


class EndpointNotFound(WebhooksError, PermanentError):
    code = "not_found"


class MessageNotFound(WebhooksError, PermanentError):
    code = "not_found"


class EndpointConflict(WebhooksError, PermanentError):
    """An endpoint id reused for a different definition."""

    code = "endpoint_conflict"


class UnsafeUrl(WebhooksError, PermanentError):
    """A URL webhooks must not be sent to (scheme, credentials, or a private destination)."""

    code = "unsafe_url"

    def __init__(self, message: str, *, field: str | None = "url") -> None:
        super().__init__(message, field=field)

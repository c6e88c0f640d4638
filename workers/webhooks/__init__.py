"""Outbound webhooks: endpoints, signed deliveries (Standard Webhooks), durable retries.

Its face: what other packages may import (an import-linter contract enforces it) — the
URL safety check the ingress runs before it accepts an endpoint, and the read views of
endpoints, messages and attempts."""

from workers.webhooks.domain import EndpointDef
from workers.webhooks.errors import UnsafeUrl
from workers.webhooks.ssrf import check_endpoint_url
from workers.webhooks.views import AttemptView, MessageView

__all__ = ["AttemptView", "EndpointDef", "MessageView", "UnsafeUrl", "check_endpoint_url"]

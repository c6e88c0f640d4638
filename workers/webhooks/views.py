"""Webhooks' views: rows → contracts. What the ingress reads of messages and attempts (the
read models ``storage.webhooks.WebhookRepository`` returns), and the ``EndpointData`` an
endpoint's events carry. Re-exported by the face (``workers/webhooks/__init__.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.webhooks import EndpointData, EndpointFormat
from workers.webhooks.domain import EndpointDef


@dataclass(frozen=True)
class MessageView:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_response_status: int | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptView:
    id: int
    message_id: str
    endpoint_id: str
    attempted_at: datetime
    status: str
    response_status: int | None
    response_body: str | None
    latency_ms: int
    error: str | None


def endpoint_data(e: EndpointDef) -> EndpointData:
    """An endpoint as its events (``webhook.endpoint_created``/``_updated``) show it."""
    return EndpointData(
        endpoint_id=e.id,
        url=e.url,
        description=e.description,
        event_types=list(e.event_types),
        rate_limit_per_s=e.rate_limit_per_s,
        enabled=e.enabled,
        ordered=e.ordered,
        format=endpoint_format(e.format),
    )


def endpoint_format(value: str) -> EndpointFormat:
    return "slack" if value == "slack" else "standard"

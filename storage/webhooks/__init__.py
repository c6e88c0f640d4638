"""Webhooks storage: endpoints, messages (one per event and endpoint) and delivery attempts.

models.py holds the tables, statements.py the set-based SQL of the hot paths, and
repository.py every read and write (``WebhookRepository``). The types it takes and returns
are the context's: domain types (``workers/webhooks/domain.py``) and read views
(``workers/webhooks/views.py``)."""

from storage.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from storage.webhooks.repository import WebhookRepository
from storage.webhooks.statements import DELIVER_JOB, RECORD_JOB
from workers.webhooks.domain import EndpointFilter  # imported from here by older tests

__all__ = [
    "DELIVER_JOB",
    "RECORD_JOB",
    "EndpointFilter",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookMessage",
    "WebhookRepository",
]

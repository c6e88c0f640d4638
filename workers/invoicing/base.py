"""What every part of invoicing that writes shares: the shape of a command handler and how
an invoicing event is published (through the outbox, keyed ``tenant:customer``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import topics
from schemas.envelope import CloudEvent
from workers.runtime import Tx

Result = dict[str, Any]
Handler = Callable[[Any, Tx], Awaitable[Result]]  # a command, its transaction -> its result


def emit(tx: Tx, event: CloudEvent, *scope: str) -> None:
    """Publish ``event`` keyed by its tenant and (``scope``) its customer's external id."""
    tx.emit(event, topic=topics.EVENTS_INVOICING, key=topics.partition_key(event.tenantid, *scope))

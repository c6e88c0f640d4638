"""An alert's change of state goes out twice: its event through the outbox, in the same
transaction, and a structured log line once that transaction committed (the log is a
channel of its own)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from schemas import topics
from schemas.envelope import CloudEvent
from workers.alerts import service
from workers.alerts.service import Alert
from workers.runtime import Tx

log = structlog.get_logger("billstream.alerts")


def publish(tx: Tx, alerts: Sequence[Alert], cause: CloudEvent | None = None) -> None:
    """Emit each alert's event (caused by ``cause``, if given), keyed by its tenant, and log
    the alerts after the commit."""
    for a in alerts:
        event = service.event_for(a, cause)
        tx.emit(event, topic=topics.EVENTS_ALERTS, key=topics.partition_key(event.tenantid))
    if alerts:
        tx.after_commit(lambda: _log(alerts))


def _log(alerts: Sequence[Alert]) -> None:
    for a in alerts:
        level = log.warning if a.state == "firing" else log.info
        level(
            f"alert {a.state}",
            alert_id=a.id,
            tenantid=a.tenant_id,
            rule=a.rule_key,
            kind=a.kind,
            condition=a.condition,
            subject=a.subject,
            threshold=str(a.threshold) if a.threshold is not None else None,
            value=str(a.value) if a.value is not None else None,
            unit=a.unit,
            about=a.about_href,
            message=a.message,
            resolution=a.resolution,
        )

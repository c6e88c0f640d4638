"""The events the alerts context emits: one per state an alert enters."""

from __future__ import annotations

from typing import Any

from schemas.alerts import AlertAcknowledged, AlertRaised, AlertResolved
from schemas.envelope import CloudEvent
from workers.alerts.service.domain import Alert
from workers.alerts.views import alert_data

SOURCE = "billstream/alerts"

_EVENTS: dict[str, type[AlertRaised | AlertAcknowledged | AlertResolved]] = {
    "firing": AlertRaised,
    "acknowledged": AlertAcknowledged,
    "resolved": AlertResolved,
}


def event_for(a: Alert, cause: CloudEvent | None = None) -> CloudEvent:
    """The event of the state ``a`` just entered. Its id is derived from the alert and the
    state, so the same transition always has the same event id."""
    cls = _EVENTS[a.state]
    envelope: dict[str, Any] = cause.caused() if cause is not None else {"tenantid": a.tenant_id}
    return cls(
        **envelope,
        id=f"{a.id}.{cls.model_fields['type'].default}",
        source=SOURCE,
        subject=a.subject,
        data=alert_data(a),
    )

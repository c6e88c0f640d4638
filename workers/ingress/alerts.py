"""The alerts API: rules (commands, 202) and alerts (reads; acknowledge and resolve are
commands).

Writes publish a command on ``billstream.commands.alerts.v1``, keyed by the tenant id, and
answer 202 with the command id (outcome at ``/v1/commands/{id}``). A rule that is not valid
is refused here with a 422 naming the field; whether the key is free, the rule or the
alert exists, is the alerts worker's to decide (the command fails). Reads come from
PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from schemas import topics
from schemas.alerts import (
    ALERT_ID_PATTERN,
    RULE_KEY_PATTERN,
    AcknowledgeAlert,
    AlertData,
    AlertRef,
    AlertState,
    CreateAlertRule,
    DeleteAlertRule,
    ResolveAlert,
    RuleRef,
    RuleSpec,
)
from schemas.envelope import CloudEvent
from storage.alerts import AlertsRepository
from workers import alerts
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Text
from workers.ingress.problems import Problem, invalid
from workers.ingress.routes import CommandAccepted, envelope, submit

router = APIRouter(prefix="/v1", tags=["alerts"])

RuleKeyPath = Annotated[str, Path(pattern=RULE_KEY_PATTERN, description="The rule's key.")]
AlertIdPath = Annotated[str, Path(pattern=ALERT_ID_PATTERN, description="al_ + 32 hex digits.")]

_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


async def _send(request: Request, st: State, tenant_id: str, command: CloudEvent) -> Response:
    return await submit(
        request, st, tenant_id, command, topic=topics.COMMANDS_ALERTS, key=tenant_id
    )


# --- rules ---------------------------------------------------------------------------


@router.post("/alert-rules", summary="Define an alert rule (command)", **_ACCEPTED)
async def create_rule(request: Request, spec: RuleSpec, st: State, tenant_id: Tenant) -> Response:
    """Publishes a ``CreateAlertRule`` command; follow ``status_url`` for the outcome.
    Rules are immutable: re-sending the identical definition succeeds, another definition
    under the same key fails (delete the rule first). An invalid rule is refused with a 422
    naming the field, and nothing is published."""
    command = CreateAlertRule(data=spec, **envelope(request, tenant_id, spec.key))
    return await _send(request, st, tenant_id, command)


@router.get("/alert-rules", response_model=list[alerts.AlertRuleView], summary="List alert rules")
async def list_rules(tx: Unit, tenant_id: Tenant) -> list[alerts.AlertRuleView]:
    """The tenant's rules, by key."""
    return [alerts.rule_view(r) for r in await tx.repo(AlertsRepository).rules(tenant_id)]


@router.get("/alert-rules/{key}", response_model=alerts.AlertRuleView, summary="One alert rule")
async def get_rule(key: RuleKeyPath, tx: Unit, tenant_id: Tenant) -> alerts.AlertRuleView:
    """404 if there is no such rule (yet: a create command may still be pending)."""
    rule = await tx.repo(AlertsRepository).rule(tenant_id, key)
    if rule is None:
        raise Problem(404, "not_found", "No such alert rule", f"no alert rule {key!r}")
    return alerts.rule_view(rule)


@router.delete(
    "/alert-rules/{key}",
    summary="Delete an alert rule; its open alerts resolve (command)",
    **_ACCEPTED,
)
async def delete_rule(request: Request, key: RuleKeyPath, st: State, tenant_id: Tenant) -> Response:
    """Publishes a ``DeleteAlertRule`` command. The rule's open alerts are resolved
    (resolution ``rule deleted``); the command fails if there is no such rule."""
    command = DeleteAlertRule(data=RuleRef(key=key), **envelope(request, tenant_id, key))
    return await _send(request, st, tenant_id, command)


# --- alerts --------------------------------------------------------------------------


class AlertPage(BaseModel):
    data: list[AlertData]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= (with the same filters) for the next, older page; "
        "null on the last page."
    )


# a cursor is base64url without padding (encode_cursor): what else makes it valid (the page
# it continues) is opaque
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
MAX_CURSOR_LENGTH = 256


def encode_cursor(raised_at: datetime, alert_id: str) -> str:
    """Opaque to clients: the (raised_at, id) of the last alert of a page."""
    raw = f"{raised_at.isoformat()}|{alert_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, alert_id = raw.partition("|")
        raised_at = datetime.fromisoformat(at)
        if raised_at.tzinfo is None or not re.fullmatch(ALERT_ID_PATTERN, alert_id):
            raise ValueError(raw)
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise invalid(
            "cursor is not valid",
            [{"field": "cursor", "reason": "pass the next_cursor of a previous page, unchanged"}],
        ) from None
    return raised_at, alert_id


@router.get("/alerts", response_model=AlertPage, summary="List alerts, newest first")
async def list_alerts(
    tx: Unit,
    tenant_id: Tenant,
    state: Annotated[
        list[AlertState] | None,
        Query(description="Only alerts in these states (repeat it); default: every state."),
    ] = None,
    rule: Annotated[
        str | None, Query(pattern=RULE_KEY_PATTERN, description="Only this rule's alerts.")
    ] = None,
    subject: Annotated[
        str | None, Query(min_length=1, max_length=256, description="Only about this subject.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            max_length=MAX_CURSOR_LENGTH,
            description="next_cursor of the previous page, unchanged",
        ),
    ] = None,
) -> AlertPage:
    """Alerts by ``raised_at``, newest first, ``limit`` per page; ``next_cursor`` leads to
    the next page."""
    before = decode_cursor(cursor) if cursor is not None else None
    rows = await tx.repo(AlertsRepository).list_alerts(
        tenant_id,
        states=list(dict.fromkeys(state or [])),
        rule=rule,
        subject=subject,
        limit=limit + 1,  # one more tells whether there is a next page
        before=before,
    )
    page = rows[:limit]
    more = len(rows) > limit
    return AlertPage(
        data=[alerts.alert_data(a) for a in page],
        next_cursor=encode_cursor(page[-1].raised_at, page[-1].id) if more else None,
    )


@router.get("/alerts/{alert_id}", response_model=AlertData, summary="One alert")
async def get_alert(alert_id: AlertIdPath, tx: Unit, tenant_id: Tenant) -> AlertData:
    """The alert as its last ``alert.*`` event carried it; 404 if there is no such alert."""
    alert = await tx.repo(AlertsRepository).alert(tenant_id, alert_id)
    if alert is None:
        raise Problem(404, "not_found", "No such alert", f"no alert {alert_id}")
    return alerts.alert_data(alert)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Text | None = Field(
        default=None, max_length=1024, description="Kept with the command, for the record."
    )


async def _alert_command(
    request: Request,
    st: State,
    tenant_id: str,
    alert_id: str,
    body: NoteIn | None,
    command: type[AcknowledgeAlert] | type[ResolveAlert],
) -> Response:
    body = body or NoteIn()
    event = command(
        data=AlertRef(alert_id=alert_id, note=body.note),
        **envelope(request, tenant_id, alert_id),
    )
    return await _send(request, st, tenant_id, event)


@router.post(
    "/alerts/{alert_id}/acknowledge",
    summary="Acknowledge an alert: someone is on it (command)",
    **_ACCEPTED,
)
async def acknowledge_alert(
    request: Request,
    alert_id: AlertIdPath,
    st: State,
    tenant_id: Tenant,
    body: Annotated[NoteIn | None, Body()] = None,
) -> Response:
    """Publishes an ``AcknowledgeAlert`` command: a firing alert becomes acknowledged (one
    already acknowledged stays so); the command fails for an unknown alert."""
    return await _alert_command(request, st, tenant_id, alert_id, body, AcknowledgeAlert)


@router.post(
    "/alerts/{alert_id}/resolve", summary="Resolve an alert by hand (command)", **_ACCEPTED
)
async def resolve_alert(
    request: Request,
    alert_id: AlertIdPath,
    st: State,
    tenant_id: Tenant,
    body: Annotated[NoteIn | None, Body()] = None,
) -> Response:
    """Publishes a ``ResolveAlert`` command: an open alert becomes resolved (e.g. a dead
    letter that was dealt with); the command fails for an unknown alert."""
    return await _alert_command(request, st, tenant_id, alert_id, body, ResolveAlert)

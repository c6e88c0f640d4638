"""The alerts commands: one table from command type to its handler.

A handler is ``f(command, tx, now) -> result``: its effects through the repository, the
events of the alerts it changed through ``publish``, and the command's result (the outcome
at ``/v1/commands/{id}``). A ``PermanentError`` fails the command: nothing it wrote or
emitted is kept. ``now`` is the worker's clock (tests move it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from schemas.alerts import AcknowledgeAlert, CreateAlertRule, DeleteAlertRule, ResolveAlert
from storage.alerts import AlertsRepository
from workers.alerts import service
from workers.alerts.errors import AlertNotFound, RuleNotFound
from workers.alerts.publish import publish
from workers.alerts.service import Alert
from workers.runtime import Tx

Handler = Callable[[Any, Tx, datetime], Awaitable[dict[str, Any]]]


async def create_rule(command: CreateAlertRule, tx: Tx, now: datetime) -> dict[str, Any]:
    """Rules are immutable: the same definition again succeeds, another one fails."""
    wanted = service.new_rule(command)
    existing = await tx.repo(AlertsRepository).add_rule(wanted)
    if existing is not None:
        service.ensure_same_definition(existing, wanted)
    return {"rule": command.data.key}


async def delete_rule(command: DeleteAlertRule, tx: Tx, now: datetime) -> dict[str, Any]:
    """The rule goes; its open alerts resolve (``rule deleted``)."""
    repo = tx.repo(AlertsRepository)
    deleted = await repo.delete_rule(command.tenantid, command.data.key)
    if deleted is None:
        raise RuleNotFound(f"no alert rule {command.data.key!r}", field="key")
    resolved = await repo.resolve_rule(command.tenantid, deleted.id, now)
    publish(tx, resolved, command)
    return {"rule": command.data.key, "resolved": len(resolved)}


async def acknowledge(command: AcknowledgeAlert, tx: Tx, now: datetime) -> dict[str, Any]:
    """firing → acknowledged (an alert acknowledged or resolved already stays as it is)."""
    alert_id = command.data.alert_id
    current = await _locked(tx, command.tenantid, alert_id)
    after = await tx.repo(AlertsRepository).acknowledge(command.tenantid, alert_id, now)
    return _changed(tx, command, current, after)


async def resolve(command: ResolveAlert, tx: Tx, now: datetime) -> dict[str, Any]:
    """An open alert → resolved by hand (with the note, if any, as its resolution)."""
    alert_id = command.data.alert_id
    current = await _locked(tx, command.tenantid, alert_id)
    why = f"resolved by hand: {command.data.note}" if command.data.note else "resolved by hand"
    after = await tx.repo(AlertsRepository).resolve(command.tenantid, alert_id, now, why)
    return _changed(tx, command, current, after)


async def _locked(tx: Tx, tenant_id: str, alert_id: str) -> Alert:
    current = await tx.repo(AlertsRepository).alert(tenant_id, alert_id, lock=True)
    if current is None:
        raise AlertNotFound(f"no alert {alert_id!r}", field="alert_id")
    return current


def _changed(
    tx: Tx, command: AcknowledgeAlert | ResolveAlert, current: Alert, after: Alert | None
) -> dict[str, Any]:
    publish(tx, [after] if after is not None else [], command)
    return {"alert_id": command.data.alert_id, "state": (after or current).state}


COMMANDS: dict[type[Any], Handler] = {
    CreateAlertRule: create_rule,
    DeleteAlertRule: delete_rule,
    AcknowledgeAlert: acknowledge,
    ResolveAlert: resolve,
}

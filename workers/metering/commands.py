"""Metering's commands: one table from command type to the function that applies it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import topics
from schemas.metering import CreateMeter
from storage.metering import MeterRepository
from workers.metering import service
from workers.runtime import Tx


async def create_meter(command: CreateMeter, tx: Tx) -> dict[str, Any]:
    """Creates a meter (idempotently: the same definition again is a no-op) and emits
    meter.created; a different definition under an existing key is refused."""
    wanted = service.new_meter(command)
    existing = await tx.repo(MeterRepository).add(wanted)
    if existing is not None:
        service.ensure_same_definition(existing, wanted)
        return {"meter_id": existing.id}
    tx.emit(
        service.meter_created(command, wanted),
        topic=topics.EVENTS_METERING,
        key=topics.partition_key(command.tenantid),
    )
    return {"meter_id": wanted.id}


COMMANDS: dict[type[Any], Callable[[Any, Tx], Awaitable[dict[str, Any]]]] = {
    CreateMeter: create_meter,
}

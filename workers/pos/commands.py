"""POS commands: one table from command type to the function that applies it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas.pos import SetPosMapping
from storage.pos import PosMappingRepository
from workers.pos import service
from workers.runtime import Tx


async def set_mapping(command: SetPosMapping, tx: Tx) -> dict[str, Any]:
    """Stores a POS source's mapping (create or replace); later receipts use the new one."""
    source = command.data.source
    spec = service.mapping_of(command)
    await tx.repo(PosMappingRepository).put(
        command.tenantid, source, spec.model_dump(mode="json"), command.id
    )
    return {"source": source}


COMMANDS: dict[type[Any], Callable[[Any, Tx], Awaitable[dict[str, Any]]]] = {
    SetPosMapping: set_mapping,
}

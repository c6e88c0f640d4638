"""The documents commands: one table from command type to its handler, ``f(command, tx)
-> result`` (the outcome at ``/v1/commands/{id}``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas.documents import ConfigureBranding
from storage.documents import DocumentRepository
from workers.runtime import Tx

Handler = Callable[[Any, Tx], Awaitable[dict[str, Any]]]


async def configure_branding(command: ConfigureBranding, tx: Tx) -> dict[str, Any]:
    """Replaces the tenant's branding, whole. Invoices rendered before keep theirs (a PDF is
    rendered once); those finalized from now on show this one."""
    spec = command.data.model_dump(mode="json")
    updated_at = await tx.repo(DocumentRepository).set_branding(command.tenantid, spec)
    return {"name": command.data.name, "updated_at": updated_at.isoformat()}


COMMANDS: dict[type[Any], Handler] = {ConfigureBranding: configure_branding}

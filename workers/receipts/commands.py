"""The receipts commands: one table from command type to its handler, ``f(command, tx,
settings) -> result`` (the outcome at ``/v1/commands/{id}``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas.receipts import RotateReceiptKey
from storage.receipts import ReceiptRepository
from workers.receipts.errors import KeysChanging, TooManyKeys
from workers.receipts.signing import add_key
from workers.runtime import Tx
from workers.settings import Settings

MAX_KEYS = 1_000  # yearly rotations for a millennium; bounds what the JWKS routes read

Handler = Callable[[Any, Tx, Settings], Awaitable[dict[str, Any]]]


async def rotate_key(command: RotateReceiptKey, tx: Tx, settings: Settings) -> dict[str, Any]:
    """The current key's validity ends now (once the receipts being signed with it are
    committed); a new key is valid from that same instant."""
    repo = tx.repo(ReceiptRepository)
    if await repo.count_keys(command.tenantid) >= MAX_KEYS:
        raise TooManyKeys(
            f"a tenant keeps at most {MAX_KEYS} receipt keys (every past key stays published)"
        )
    retired = await repo.retire_current_key(command.tenantid)
    now = retired.not_after if retired is not None and retired.not_after else await repo.clock()
    kid = await add_key(tx, settings, command.tenantid, now)
    if kid is None:  # a first key was created by a receipt at this very moment
        raise KeysChanging("a key was created concurrently; the rotation is retried")
    return {
        "kid": kid,
        "retired_kid": retired.kid if retired is not None else None,
        "valid_from": now.isoformat(),
    }


COMMANDS: dict[type[Any], Handler] = {RotateReceiptKey: rotate_key}

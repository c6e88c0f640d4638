"""The tenant's signing key, read under a share lock (a rotation waits for the receipts
signed with it) or created on first use; private keys are stored encrypted like the
Stripe secrets (``BILLSTREAM_SECRETS_KEY``) and kept decrypted in memory by key id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage.receipts import ReceiptKeyRow, ReceiptRepository
from workers.payments import decrypt_secret, encrypt_secret
from workers.receipts import service
from workers.receipts.errors import KeysChanging
from workers.runtime import Tx
from workers.settings import Settings


@dataclass(frozen=True)
class Signer:
    kid: str
    key: Ed25519PrivateKey


_DECRYPTED: dict[tuple[str, str], Ed25519PrivateKey] = {}


async def signers(tx: Tx, settings: Settings, tenant_ids: Iterable[str]) -> dict[str, Signer]:
    """The current signer of each tenant, a key created for a tenant that has none."""
    repo = tx.repo(ReceiptRepository)
    wanted = set(tenant_ids)
    for _ in range(3):
        current = await repo.current_keys(wanted)
        missing = sorted(wanted - current.keys())
        if not missing:
            return {t: _signer(settings, row) for t, row in current.items()}
        # none yet, or rotated while this statement waited for it: the next read sees it
        now = await repo.clock()
        for t in missing:
            await add_key(tx, settings, t, now)
    raise KeysChanging("the signing keys kept changing while they were read")


async def add_key(tx: Tx, settings: Settings, tenant_id: str, not_before: datetime) -> str | None:
    """A new current key for the tenant, valid from ``not_before``; None when another
    writer gave it one first."""
    pair = service.new_key()
    added = await tx.repo(ReceiptRepository).add_current_key(
        tenant_id, pair.kid, pair.public_key, encrypt_secret(settings, pair.private_key), not_before
    )
    return pair.kid if added else None


def _signer(settings: Settings, row: ReceiptKeyRow) -> Signer:
    key = _DECRYPTED.get((row.tenant_id, row.kid))
    if key is None:
        key = service.private_key(decrypt_secret(settings, row.private_key))
        if len(_DECRYPTED) > 10_000:
            _DECRYPTED.clear()
        _DECRYPTED[(row.tenant_id, row.kid)] = key
    return Signer(row.kid, key)

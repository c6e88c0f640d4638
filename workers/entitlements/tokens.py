"""Entitlement tokens: compact JWS (RFC 7515) JWTs signed with EdDSA (Ed25519, RFC 8037)
by the deployment's current key, and the JWKS (RFC 7517) gateways verify them with.

Keys are made and rotated by the entitlements worker (``rotate``); the ingress signs with
the current one (``Signer``), kept decrypted in memory by key id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage.entitlements import EntitlementRepository, SigningKeyRow
from workers.payments import decrypt_secret, encrypt_secret
from workers.receipts import b64url, new_key, private_key
from workers.runtime import Tx
from workers.settings import Settings

_DECRYPTED: dict[str, Ed25519PrivateKey] = {}

#: a new key is published this long before it signs: /.well-known/jwks.json may be cached
#: five minutes, so every gateway knows a key before the first token it signs
SIGNS_AFTER = timedelta(minutes=6)
#: a key stays published this long after it stopped signing: the longest a token lives
#: (a day), and the ingress's cache of the signing key
PUBLISHED_AFTER_RETIRED = timedelta(days=1, minutes=1)


@dataclass(frozen=True)
class Signer:
    kid: str
    key: Ed25519PrivateKey

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "EdDSA", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_part(header)}.{_part(claims)}"
        return f"{signing_input}.{b64url(self.key.sign(signing_input.encode()))}"


def _part(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def signer(settings: Settings, row: SigningKeyRow) -> Signer:
    key = _DECRYPTED.get(row.kid)
    if key is None:
        key = private_key(decrypt_secret(settings, row.private_key))
        if len(_DECRYPTED) > 1_000:
            _DECRYPTED.clear()
        _DECRYPTED[row.kid] = key
    return Signer(row.kid, key)


def jwks(rows: Sequence[SigningKeyRow]) -> dict[str, Any]:
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": r.public_key,
                "kid": r.kid,
                "alg": "EdDSA",
                "use": "sig",
            }
            for r in rows
        ]
    }


async def rotate(tx: Tx, settings: Settings, now: datetime) -> str | None:
    """A new key published from ``now``, signing from ``now + SIGNS_AFTER`` when the old one
    retires; None if another replica rotated at the same moment (its key is the new one)."""
    pair = new_key()
    added = await tx.repo(EntitlementRepository).rotate_signing_key(
        pair.kid, pair.public_key, encrypt_secret(settings, pair.private_key), now, SIGNS_AFTER
    )
    return pair.kid if added else None

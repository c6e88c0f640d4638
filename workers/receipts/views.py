"""Receipts rows → contracts: a receipt as the API, the export and ``receipt.issued`` carry
it, and a tenant's public keys as a JWKS. What the ingress and the CLI use of receipts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from schemas.receipts import ReceiptData
from workers.receipts.service import jwk

if TYPE_CHECKING:
    from storage.receipts import ReceiptKeyRow, ReceiptRow


def receipt_data(row: ReceiptRow) -> ReceiptData:
    return ReceiptData(
        receipt_id=row.id,
        customer=row.customer,
        seq=row.seq,
        kind=row.kind,  # one of KINDS: only the worker writes it
        document_id=row.document_id,
        kid=row.kid,
        issued_at=row.issued_at,
        prev_hash=row.prev_hash,
        hash=row.hash,
        signature=row.signature,
        payload=row.payload,
    )


def export_line(row: ReceiptRow) -> str:
    """One line of a chain's export (JSON lines): the receipt as the API shows it."""
    return receipt_data(row).model_dump_json() + "\n"


def jwks(keys: Iterable[ReceiptKeyRow]) -> dict[str, Any]:
    """A tenant's public keys, current and past, each with its validity (RFC 7517 + 8037)."""
    return {"keys": [jwk(k.kid, k.public_key, k.not_before, k.not_after) for k in keys]}

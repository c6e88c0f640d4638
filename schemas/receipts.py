"""Receipts commands (``billstream.commands.receipts.v1``) and events
(``billstream.events.receipts.v1``), and the receipt format itself (docs/receipts.md).

A receipt attests one billing document — a finalized invoice, an issued credit note, a
succeeded payment, a refund — by the canonical JSON (RFC 8785) of what it attests. Receipts
form one hash chain per tenant and customer: each receipt's ``payload`` names its sequence
number and the SHA-256 of the previous receipt's payload, and is signed with the tenant's
current Ed25519 key (a detached signature). Anyone holding the tenant's public keys
(``/.well-known/billstream/{tenant}/keys.json``) can verify a chain offline.

A receipt's id is known before it is issued (``receipt_id``): an invoice carries the id of
the receipt that attests it from the moment it is finalized.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import CloudEvent

ReceiptKind = Literal["invoice", "credit_note", "payment", "refund"]
KINDS: tuple[ReceiptKind, ...] = ("invoice", "credit_note", "payment", "refund")
GENESIS = "0" * 64  # the prev_hash of a chain's first receipt
KEY_ID_PATTERN = r"^[A-Za-z0-9_\-]{43}$"  # an RFC 7638 JWK thumbprint (SHA-256, base64url)
RECEIPT_ID_PATTERN = r"^rct_[0-9a-f]{32}$"

_NAMESPACE = uuid.UUID("6f1d2a4e-6c53-5b8e-9a0e-2f3c8b7d9e10")


def receipt_id(tenant_id: str, kind: ReceiptKind, document_id: str) -> str:
    """The id of the receipt attesting ``kind`` ``document_id`` of ``tenant_id``: the same
    on every replica and every replay, so a document is attested once."""
    return "rct_" + uuid.uuid5(_NAMESPACE, f"{tenant_id}\x1f{kind}\x1f{document_id}").hex


def canonical(value: Any) -> bytes:
    """The RFC 8785 (JSON Canonicalization Scheme) bytes of ``value``."""
    return rfc8785.dumps(value)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- commands -------------------------------------------------------------------------------


class RotationSpec(_Model):
    reason: str | None = Field(
        default=None, max_length=500, description="Why (kept in the command's outcome)"
    )


class RotateReceiptKey(CloudEvent):
    """The tenant's current signing key stops signing now (its validity ends) and a new one
    signs every receipt from now on. Past keys stay published, with their validity."""

    type: Literal["receipts.rotate_key"] = "receipts.rotate_key"
    data: RotationSpec = Field(default_factory=RotationSpec)


ReceiptsCommand = Annotated[RotateReceiptKey, Field(discriminator="type")]


# --- the receipt ----------------------------------------------------------------------------


class Subject(_Model):
    kind: ReceiptKind
    id: str = Field(min_length=1, max_length=128, description="The document's id")


class Payload(_Model):
    """What a receipt signs, as its canonical JSON (``Receipt.payload``)."""

    receipt_id: str = Field(pattern=RECEIPT_ID_PATTERN)
    tenant: str
    customer: str = Field(description="The customer's external id: one chain per customer")
    seq: int = Field(ge=1, description="1, 2, 3, … in the customer's chain, no gap")
    prev_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the previous receipt's payload; 64 zeros for the first",
    )
    kid: str = Field(pattern=KEY_ID_PATTERN, description="The signing key's id")
    issued_at: datetime
    subject: Subject
    content: dict[str, Any] = Field(description="What is attested (docs/receipts.md)")


class ReceiptData(_Model):
    """A receipt as the API, the export (one per line) and ``receipt.issued`` carry it.

    ``payload`` is the signed text; the other fields repeat what it says for convenience
    (a verifier checks they agree) and add its ``hash`` and ``signature``."""

    receipt_id: str = Field(pattern=RECEIPT_ID_PATTERN)
    customer: str
    seq: int = Field(ge=1)
    kind: ReceiptKind
    document_id: str
    kid: str = Field(pattern=KEY_ID_PATTERN)
    issued_at: datetime
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of payload")
    signature: str = Field(description="Ed25519 over payload's UTF-8 bytes, base64url (no pad)")
    payload: str = Field(description="The canonical JSON (RFC 8785) of a Payload")


class ReceiptIssued(CloudEvent):
    type: Literal["receipt.issued"] = "receipt.issued"
    data: ReceiptData


COMMANDS: tuple[type[CloudEvent], ...] = (RotateReceiptKey,)
EVENTS: tuple[type[CloudEvent], ...] = (ReceiptIssued,)

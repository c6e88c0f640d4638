"""Receipts, pure: what a document's receipt attests, how a receipt is made and signed, and
the events the context emits. No I/O: the handlers give it the chain's head, the signing
key and the time, all read under the chain's lock (ADR 0052)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from schemas.credit_notes import CreditNoteData, CreditNoteIssued
from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceData, InvoiceFinalized
from schemas.payments import PaymentData, PaymentRefunded, PaymentSucceeded, RefundData
from schemas.receipts import (
    Payload,
    ReceiptData,
    ReceiptIssued,
    ReceiptKind,
    Subject,
    canonical,
    receipt_id,
)

SOURCE = "billstream/receipts"

# What a document may still change after it is attested (payments, credit notes, voids):
# never part of what its receipt says.
INVOICE_MUTABLE = frozenset(
    {
        "status",
        "amount_paid",
        "amount_credited",
        "amount_due",
        "amount_refunded",
        "receipt_id",
        "pdf_url",
    }
)
CREDIT_NOTE_MUTABLE = frozenset(
    {"status", "voided_at", "void_reason", "invoice_amount_due", "receipt_id"}
)
REFUND_MUTABLE = frozenset({"amount_refunded"})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- what is attested -------------------------------------------------------------------


@dataclass(frozen=True)
class Attestation:
    """One document to attest: the receipt's subject and what it says."""

    tenant_id: str
    customer: str
    kind: ReceiptKind
    document_id: str
    content: dict[str, Any]

    @property
    def receipt_id(self) -> str:
        return receipt_id(self.tenant_id, self.kind, self.document_id)


def _content(data: Any, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    # absent optional fields are left out, so a field added to a contract later does not
    # change what an earlier document's receipt attests (docs/receipts.md)
    dumped: dict[str, Any] = data.model_dump(mode="json", exclude=set(exclude), exclude_none=True)
    return dumped


def invoice_content(data: InvoiceData) -> dict[str, Any]:
    return _content(data, INVOICE_MUTABLE)


def credit_note_content(data: CreditNoteData) -> dict[str, Any]:
    return _content(data, CREDIT_NOTE_MUTABLE)


def payment_content(data: PaymentData) -> dict[str, Any]:
    return _content(data)


def refund_content(data: RefundData) -> dict[str, Any]:
    return _content(data, REFUND_MUTABLE)


def attest(event: CloudEvent) -> Attestation | None:
    """The document ``event`` reports, to attest; None for an event no receipt is for."""
    t = event.tenantid
    if isinstance(event, InvoiceFinalized):
        d = event.data
        return Attestation(t, d.customer, "invoice", d.invoice_id, invoice_content(d))
    if isinstance(event, CreditNoteIssued):
        n = event.data
        return Attestation(t, n.customer, "credit_note", n.credit_note_id, credit_note_content(n))
    if isinstance(event, PaymentSucceeded):
        p = event.data
        return Attestation(t, p.customer, "payment", p.payment_id, payment_content(p))
    if isinstance(event, PaymentRefunded):
        r = event.data
        return Attestation(t, r.customer, "refund", r.refund_id, refund_content(r))
    return None


# --- keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    kid: str
    public_key: str  # raw, base64url
    private_key: str  # raw seed, base64url (encrypted before it is stored)


def thumbprint(public_key: str) -> str:
    """The RFC 7638 JWK thumbprint of an Ed25519 public key (base64url): its key id."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": public_key}
    return b64url(hashlib.sha256(canonical(members)).digest())


def new_key() -> KeyPair:
    private = Ed25519PrivateKey.generate()
    public = b64url(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    seed = b64url(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return KeyPair(thumbprint(public), public, seed)


def private_key(seed: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(unb64url(seed))


def jwk(
    kid: str, public_key: str, not_before: datetime, not_after: datetime | None
) -> dict[str, Any]:
    """One key as a JWK (RFC 8037), with its validity: receipts it signed were issued at or
    after ``not_before`` and before ``not_after`` (none while it is the current key)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": public_key,
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
        "not_before": _rfc3339(not_before),
        "not_after": _rfc3339(not_after) if not_after is not None else None,
    }


def _rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- a receipt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """Where a chain stands: its last sequence number and that receipt's hash."""

    seq: int
    hash: str


def issue(
    a: Attestation, head: Head, kid: str, signer: Ed25519PrivateKey, now: datetime
) -> ReceiptData:
    """The receipt of ``a`` appended to the chain at ``head``, signed by key ``kid``."""
    payload = Payload(
        receipt_id=a.receipt_id,
        tenant=a.tenant_id,
        customer=a.customer,
        seq=head.seq + 1,
        prev_hash=head.hash,
        kid=kid,
        issued_at=now,
        subject=Subject(kind=a.kind, id=a.document_id),
        content=a.content,
    )
    body = canonical(payload.model_dump(mode="json"))
    return ReceiptData(
        receipt_id=a.receipt_id,
        customer=a.customer,
        seq=payload.seq,
        kind=a.kind,
        document_id=a.document_id,
        kid=kid,
        issued_at=now,
        prev_hash=head.hash,
        hash=hashlib.sha256(body).hexdigest(),
        signature=b64url(signer.sign(body)),
        payload=body.decode(),
    )


def receipt_issued(receipt: ReceiptData, cause: CloudEvent) -> ReceiptIssued:
    return ReceiptIssued(
        source=SOURCE,
        subject=receipt.receipt_id,
        data=receipt,
        **cause.caused(),
    )

"""Issuing receipts for a batch of documents, in one transaction: the tenants' keys
(share-locked), the chains' heads (locked, in one order), then — under those locks — what
is issued already is skipped, and each new receipt is appended to its chain and announced
through the outbox. A replay finds its receipts issued and changes nothing (ADR 0052)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.receipts import GENESIS, ReceiptData
from storage.receipts import ReceiptRepository, ReceiptRow
from workers.receipts import service
from workers.receipts.service import Attestation, Head
from workers.receipts.signing import signers
from workers.runtime import Tx
from workers.settings import Settings


async def issue(
    tx: Tx, settings: Settings, documents: Sequence[tuple[Attestation, CloudEvent]]
) -> int:
    """Issues the receipts of ``documents`` (in their order within each chain) that are not
    issued yet; returns how many it issued."""
    if not documents:
        return 0
    repo = tx.repo(ReceiptRepository)
    keys = await signers(tx, settings, {a.tenant_id for a, _ in documents})
    locked = await repo.lock_heads({(a.tenant_id, a.customer) for a, _ in documents}, GENESIS)
    issued = await repo.existing({(a.tenant_id, a.receipt_id) for a, _ in documents})
    heads = {chain: Head(seq, hash) for chain, (seq, hash) in locked.items()}
    now = await repo.clock()
    rows: dict[str, list[ReceiptRow]] = {}
    for a, cause in documents:
        if (a.tenant_id, a.receipt_id) in issued:
            continue
        issued.add((a.tenant_id, a.receipt_id))
        chain, signer = (a.tenant_id, a.customer), keys[a.tenant_id]
        receipt = service.issue(a, heads[chain], signer.kid, signer.key, now)
        heads[chain] = Head(receipt.seq, receipt.hash)
        rows.setdefault(a.tenant_id, []).append(_row(a.tenant_id, receipt))
        tx.emit(
            service.receipt_issued(receipt, cause),
            topic=topics.EVENTS_RECEIPTS,
            key=topics.partition_key(a.tenant_id, a.customer),
        )
    for tenant_id, tenant_rows in rows.items():
        await repo.append(tenant_id, tenant_rows)
    return sum(len(r) for r in rows.values())


def _row(tenant_id: str, r: ReceiptData) -> ReceiptRow:
    return ReceiptRow(
        tenant_id=tenant_id,
        id=r.receipt_id,
        customer=r.customer,
        seq=r.seq,
        kind=r.kind,
        document_id=r.document_id,
        kid=r.kid,
        issued_at=r.issued_at,
        prev_hash=r.prev_hash,
        hash=r.hash,
        signature=r.signature,
        payload=r.payload,
    )

"""What payments does with credit notes (``credit_note.issued`` / ``credit_note.voided`` on
invoicing's events), in the transaction of the invoicing-events consumer:

- the invoice's collection (when one is due, not in flight) collects what the invoice owes
  after the note (``invoice_amount_due``; 0 stops it);
- a note's ``refund_amount`` is refunded from the invoice's succeeded payments, newest
  first, each at most what is left of it: one ``payments.refund`` command per payment,
  queued for the operations job (card payments through Stripe, offline ones recorded), with
  ids derived from the note and the payment, so a replay queues nothing twice. Their
  ``payment.refunded`` events are recorded by invoicing as for any refund.
"""

from __future__ import annotations

import uuid

import structlog

from schemas.credit_notes import CreditNoteData
from schemas.envelope import WIRE, CloudEvent
from schemas.payments import RefundPayment, RefundSpec
from storage.payments import PaymentsRepository
from storage.payments.credit_notes import CreditNotePayments
from workers.payments import service
from workers.runtime import Tx

log = structlog.get_logger("billstream.payments")

EVENTS = frozenset({"credit_note.issued", "credit_note.voided"})
_NAMESPACE = uuid.UUID("6f1c7c59-4f0e-4d8c-9a55-3c1f5d0b9e21")


def refund_id(tenant_id: str, credit_note_id: str, payment_id: str) -> str:
    """The refund of ``payment_id`` a credit note makes (the same on every replay)."""
    return "cn_" + uuid.uuid5(_NAMESPACE, f"{tenant_id}:{credit_note_id}:{payment_id}").hex


def split(refundable: list[tuple[str, int]], amount: int) -> list[tuple[str, int]]:
    """``amount`` taken from payments (newest first), each at most what is left of it."""
    out = []
    for payment_id, left in refundable:
        if amount <= 0:
            break
        take = min(left, amount)
        if take > 0:
            out.append((payment_id, take))
            amount -= take
    return out


async def on_credit_note(event: CloudEvent, tx: Tx) -> bool:
    """Apply one credit-note event; True when refunds were queued (wake the job)."""
    note = CreditNoteData.model_validate(event.data, context=WIRE)
    tenant = event.tenantid
    repo = tx.repo(CreditNotePayments)
    await repo.set_collection_amount(tenant, note.invoice_id, note.invoice_amount_due)
    if event.type != "credit_note.issued" or note.refund_amount <= 0:
        return False
    refundable = await repo.refundable(tenant, note.invoice_id)
    parts = split([(p.id, left) for p, left in refundable], note.refund_amount)
    short = note.refund_amount - sum(a for _, a in parts)
    if short:
        log.warning(
            "credit note refund exceeds what its invoice's payments have left",
            tenantid=tenant, credit_note=note.credit_note_id, short=short,
        )  # fmt: skip
    payments = tx.repo(PaymentsRepository)
    for payment_id, amount in parts:
        rid = refund_id(tenant, note.credit_note_id, payment_id)
        cmd = RefundPayment(
            id=str(uuid.uuid5(_NAMESPACE, f"refund:{tenant}:{rid}")),
            source=service.SOURCE,
            subject=note.invoice_id,
            data=RefundSpec(
                refund_id=rid,
                payment_id=payment_id,
                amount=amount,
                reason=f"credit note {note.number}",
            ),
            **event.caused(),
        )
        await payments.queue_operation(tenant, cmd.id, cmd.type, cmd.model_dump(mode="json"))
    return bool(parts)

"""What payments does for credit notes, in SQL: the succeeded payments of an invoice with
what is left to refund of each (refunds made and refunds queued), and a collection's amount
set to what the invoice still owes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BigInteger, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.payments.models import Collection, Operation, Payment


class CreditNotePayments:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def refundable(self, tenant_id: str, invoice_id: str) -> Sequence[tuple[Payment, int]]:
        """The invoice's succeeded payments, newest first, each with what is left to refund:
        its amount less what was refunded and what refunds queued (not done) will refund."""
        payments = list(
            await self.session.scalars(
                select(Payment)
                .where(
                    Payment.tenant_id == tenant_id,
                    Payment.invoice_id == invoice_id,
                    Payment.state == "succeeded",
                )
                .order_by(Payment.created_at.desc(), Payment.id.desc())
                .with_for_update()
            )
        )
        if not payments:
            return []
        payment_id = Operation.command["data"]["payment_id"].astext
        amount = Operation.command["data"]["amount"].astext.cast(BigInteger)
        queued: dict[str, int] = {
            str(k): int(v)
            for k, v in (
                await self.session.execute(
                    select(payment_id, func.coalesce(func.sum(amount), 0))
                    .where(
                        Operation.tenant_id == tenant_id,
                        Operation.type == "payments.refund",
                        Operation.state != "done",
                        payment_id.in_([p.id for p in payments]),
                    )
                    .group_by(payment_id)
                )
            )
        }
        return [(p, p.amount - p.amount_refunded - int(queued.get(p.id, 0))) for p in payments]

    async def set_collection_amount(self, tenant_id: str, invoice_id: str, amount: int) -> bool:
        """A collection not in flight collects ``amount`` from now on (0: it stops); False
        when there is none to change (none, in flight, or closed)."""
        c = await self.session.get(Collection, (tenant_id, invoice_id), with_for_update=True)
        if c is None or c.status != "due":
            return False
        if amount <= 0:
            c.status, c.next_attempt_at = "cancelled", None
        else:
            c.amount = amount
        return True

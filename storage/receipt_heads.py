"""The heads of a tenant's receipt chains, read without locking, for ``billstream receipts
export`` and ``audit``: the last sequence number and hash each chain recorded (what its
last receipt must be, so a chain that lost its last receipts is noticed)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.receipts import ReceiptChainRow

Head = tuple[str, int, str]  # (customer, seq, hash)


class ReceiptHeads:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def page(self, tenant_id: str, after: str | None, limit: int) -> list[Head]:
        """The next ``limit`` chains of the tenant (with a receipt) by customer."""
        q = select(ReceiptChainRow.customer, ReceiptChainRow.seq, ReceiptChainRow.hash).where(
            ReceiptChainRow.tenant_id == tenant_id, ReceiptChainRow.seq > 0
        )
        if after is not None:
            q = q.where(ReceiptChainRow.customer > after)
        rows = await self.session.execute(q.order_by(ReceiptChainRow.customer).limit(limit))
        return [(str(c), int(s), str(h)) for c, s, h in rows]

    async def head(self, tenant_id: str, customer: str) -> Head | None:
        """One customer's chain, if it has a receipt."""
        row = await self.session.get(ReceiptChainRow, (tenant_id, customer))
        return None if row is None or row.seq == 0 else (row.customer, row.seq, row.hash)

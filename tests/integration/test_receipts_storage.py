"""The receipts repository at the size of a backlog: one batch may open thousands of new
chains and check thousands of receipts (a billing run of 10,000 customers caught up after
an outage). Statements whose size grows with the batch would be refused by the driver (more
than 32,767 bind parameters) or by PostgreSQL (a row-value list too deep)."""

from __future__ import annotations

from schemas.receipts import GENESIS
from storage.receipts import ReceiptRepository
from tests.conftest import TenantKey
from tests.integration.support import Sessions


async def test_one_batch_opens_and_locks_ten_thousand_chains(
    sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    chains = {(t, f"c{i}") for i in range(10_000)}  # 4 parameters each would be 40,000
    async with sessions() as db, db.begin():
        repo = ReceiptRepository(db)
        heads = await repo.lock_heads(chains, GENESIS)
        assert set(heads) == chains and set(heads.values()) == {(0, GENESIS)}
        # and asking which of 10,000 receipts exist is one statement too
        assert await repo.existing({(t, f"rct_{i:032x}") for i in range(10_000)}) == set()
    async with sessions() as db, db.begin():
        again = await ReceiptRepository(db).lock_heads(chains, GENESIS)  # all exist now
        assert len(again) == 10_000

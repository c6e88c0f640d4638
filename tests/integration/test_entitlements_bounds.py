"""What one tenant can pile onto a customer is bounded, so no check reads without end: at
most MAX_GRANTS grants not yet expired per customer; expired ones do not count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from schemas.entitlements import MAX_GRANTS, GrantEntitlement, GrantSpec
from storage.entitlements import FeatureRow, GrantRow
from storage.invoicing.models import Customer
from tests.conftest import TenantKey
from tests.integration.support import Sessions
from workers.entitlements.commands import Context, grant
from workers.entitlements.errors import TooManyGrants
from workers.runtime import Tx

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


async def test_a_customer_holds_at_most_max_grants_not_yet_expired(
    sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    async with sessions() as db, db.begin():
        await db.execute(
            insert(Customer).values(
                id="c-alice", tenant_id=t, external_id="alice", name="Alice", currency="USD",
                tax_exempt=False, net_terms_days=0,
            )
        )  # fmt: skip
        await db.execute(
            insert(FeatureRow).values(tenant_id=t, key="reports", name="Reports", kind="boolean")
        )
        live = [
            {"tenant_id": t, "id": f"g{i}", "customer": "alice", "feature": "reports",
             "starts_at": NOW - timedelta(days=1), "expires_at": None}
            for i in range(MAX_GRANTS - 1)
        ]  # fmt: skip
        expired = {**live[0], "id": "old", "expires_at": NOW - timedelta(seconds=1)}
        await db.execute(insert(GrantRow).values([*live, expired]))

    def command(grant_id: str) -> GrantEntitlement:
        spec = GrantSpec(id=grant_id, customer="alice", feature="reports")
        return GrantEntitlement(source="tests", tenantid=t, data=spec)

    async with sessions() as db, db.begin():  # the last one allowed (the expired one not counted)
        assert (await grant(command("last"), Tx(db, "tests"), Context(NOW)))["grant_id"] == "last"
    with pytest.raises(TooManyGrants) as refused:
        async with sessions() as db, db.begin():
            await grant(command("one-too-many"), Tx(db, "tests"), Context(NOW))
    assert refused.value.code == "too_many_grants"
    async with sessions() as db:
        held = await db.scalar(
            select(func.count()).select_from(GrantRow).where(GrantRow.tenant_id == t)
        )
    assert held == MAX_GRANTS + 1  # the live ones and the expired one; nothing of the refused

"""The partners repository against PostgreSQL: upserts, the month's volume row, gapless
statement numbers, one tenant's rows invisible to another."""

from __future__ import annotations

from datetime import UTC, datetime

from storage.partners import PartnerRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.support import Sessions


async def test_partners_rules_attributions_and_numbers(
    sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    other = (await make_tenant(sessions, "other")).tenant_id
    jan, mar = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
    async with sessions() as db, db.begin():
        repo = PartnerRepository(db)
        row, created = await repo.upsert_partner(t, "agent-1", "Agent One", "gold", None)
        assert created and row.tier == "gold"
        row, created = await repo.upsert_partner(t, "agent-1", "Agent 1", "silver", "a@x.test")
        assert not created and (row.name, row.tier, row.email) == ("Agent 1", "silver", "a@x.test")
        await repo.upsert_partner(t, "agent-2", "Agent Two", "gold", None)
        await repo.upsert_rule(t, "std", "gold", {"kind": "percent", "percent": "0.1"})
        await repo.attribute(t, "cust", "agent-1", jan)
        await repo.attribute(t, "cust", "agent-2", mar)
        assert await repo.partner_of(t, "cust", datetime(2025, 12, 31, tzinfo=UTC)) is None
        assert await repo.partner_of(t, "cust", jan) == "agent-1"
        assert await repo.partner_of(t, "cust", datetime(2026, 2, 27, tzinfo=UTC)) == "agent-1"
        assert await repo.partner_of(t, "cust", mar) == "agent-2"
        assert await repo.attributed_customers({(t, "cust"), (t, "x"), (other, "cust")}) == {
            (t, "cust")
        }
        period = await repo.lock_period(t, "agent-1", "2026-03", "USD")
        assert period.volume == "0" and period.accrued == {}
        await repo.save_period(period, "10/3", {"std": 5})
        assert [await repo.next_number(t, 2026) for _ in range(3)] == [1, 2, 3]
        assert await repo.next_number(t, 2027) == 1
        assert await repo.next_number(other, 2026) == 1
    async with sessions() as db, db.begin():
        repo = PartnerRepository(db)
        period = await repo.lock_period(t, "agent-1", "2026-03", "USD")
        assert (period.volume, period.accrued) == ("10/3", {"std": 5})
        assert [p.partner_id for p in await repo.partners(t)] == ["agent-1", "agent-2"]
        assert await repo.partners(other) == []
        assert await repo.partner(other, "agent-1") is None
        assert await repo.rules(other) == [] and len(await repo.rules(t, partner_tier="gold")) == 1
        assert await repo.attributions(other, "agent-1") == []
        assert [a.customer for a in await repo.attributions(t, "agent-2")] == ["cust"]

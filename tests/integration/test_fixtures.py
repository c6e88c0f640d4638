from sqlalchemy import text

from tests.conftest import KafkaServer, TenantKey
from workers.runtime.topics import admin_client


async def test_fixtures_give_a_migrated_database_and_a_broker_with_topics(
    kafka: KafkaServer,
    sessions,
    tenant: TenantKey,  # type: ignore[no-untyped-def]
) -> None:
    async with sessions() as session:
        assert (await session.execute(text("SELECT count(*) FROM tenants"))).scalar_one() == 1
    client = await admin_client(kafka.bootstrap)
    try:
        assert "billstream.usage.v1.dlq" in await client.list_topics()
    finally:
        await client.close()

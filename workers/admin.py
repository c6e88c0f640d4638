"""Administrative actions shared by the CLI and the dev stack."""

from __future__ import annotations

from storage.db import create_engine, session_factory
from storage.tenants import TenantRepository


async def create_tenant(database_url: str, tenant_id: str, name: str | None) -> tuple[bool, str]:
    """Create the tenant if missing and issue a new API key: (created, key)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            repo = TenantRepository(session)
            created = await repo.create(tenant_id, name)
            key = await repo.issue_key(tenant_id)
        return created, key.secret
    finally:
        await engine.dispose()


async def key_is_valid(database_url: str, key: str) -> bool:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            return await TenantRepository(session).authenticate(key) is not None
    finally:
        await engine.dispose()

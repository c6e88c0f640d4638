"""Administrative actions shared by the CLI and the dev stack."""

from __future__ import annotations

from storage.tenants import TenantRepository
from workers.runtime.database import database
from workers.settings import Settings


def _settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


async def create_tenant(database_url: str, tenant_id: str, name: str | None) -> tuple[bool, str]:
    """Create the tenant if missing and issue a new API key: (created, key)."""
    async with (
        database(_settings(database_url), pool_size=1) as jobs,
        jobs.transaction("admin.tenant") as tx,
    ):
        repo = tx.repo(TenantRepository)
        created = await repo.create(tenant_id, name)
        key = await repo.issue_key(tenant_id)
    return created, key.secret


async def key_is_valid(database_url: str, key: str) -> bool:
    async with (
        database(_settings(database_url), pool_size=1) as jobs,
        jobs.transaction("admin.key") as tx,
    ):
        return await tx.repo(TenantRepository).authenticate(key) is not None

"""The job items the workers set aside (``billstream quarantine``).

A job step that fails permanently on one item (a subscription, a draft invoice, a billing
run, a webhook message, …) quarantines it and carries on with the rest (ADR 0044). Fix the
cause (the data, or a new release), then release the entry: the next run processes the item
again. Releasing is recorded (who, when) on the entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storage.quarantine import Entry, QuarantineRepository
from workers.runtime.database import database
from workers.settings import Settings


@asynccontextmanager
async def _repository(settings: Settings) -> AsyncIterator[QuarantineRepository]:
    """The repository in one transaction on the configured database."""
    async with (
        database(settings, pool_size=1) as jobs,
        jobs.transaction("ops.quarantine") as tx,
    ):
        yield tx.repo(QuarantineRepository)


async def entries(
    settings: Settings, tenant: str | None, released: bool, limit: int
) -> list[Entry]:
    async with _repository(settings) as repo:
        return await repo.list(tenant, released=released, limit=limit)


async def get(settings: Settings, id: str) -> Entry | None:
    async with _repository(settings) as repo:
        return await repo.get(id)


async def release(settings: Settings, id: str, actor: str) -> Entry | None:
    async with _repository(settings) as repo:
        return await repo.release(id, actor)

"""The database for code that is not a worker (the ingress, the CLI): an engine, and the
runtime's ``Jobs`` over it, so every write is a ``Tx`` like a worker's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storage.db import DatabaseError, create_engine, ping, session_factory
from workers.runtime.jobs import Jobs
from workers.settings import Settings

__all__ = ["Database", "DatabaseError", "database"]


class Database:
    """``jobs`` runs transactions (``run`` retries transient failures, ``transaction`` does
    not); ``ping`` checks PostgreSQL answers; ``close`` disposes of the connections."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self.engine = create_engine(
            settings.database_url, pool_size=pool_size or settings.database_pool_size
        )
        self.jobs = Jobs(
            session_factory(self.engine),
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
        )

    async def ping(self) -> None:
        await ping(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()


@asynccontextmanager
async def database(settings: Settings, *, pool_size: int | None = None) -> AsyncIterator[Jobs]:
    """``async with database(settings) as jobs: await jobs.run("ops.x", step)``."""
    db = Database(settings, pool_size=pool_size)
    try:
        yield db.jobs
    finally:
        await db.close()

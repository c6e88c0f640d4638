"""Holding a requested billing run while it is carried out, without a transaction open.

A replica carrying out a run (minutes at 100,000 subscriptions: many transactions of its
own) holds it with a session-level advisory lock on a connection of its own, outside any
transaction. A transaction held open for the whole run instead (a row lock on the run)
would pin PostgreSQL's xmin horizon: no row deleted or updated meanwhile could be pruned, in
any table, so every chunk and every relay round would read through more dead rows than the
last — the outbox rows the relay publishes and deletes, the subscriptions and drafts the run
rewrites (issue 22). If the worker dies, its connection closes, the lock goes with it and the
run, still pending, is carried out again (periods are never invoiced twice).

Other replicas help a run that one of them holds (issue 22: one Python process cannot bill
100,000 subscriptions in 90 s on its own): they work the same run's chunks, which every step
claims with ``FOR UPDATE SKIP LOCKED``. A helper holds the run's second lock, "helping",
SHARED for as long as it helps (``helped_run``); the holder, its own work done, takes it
EXCLUSIVE (``HeldRun.alone``), which waits for the helpers' chunks in flight to commit and
lets no new helper start, so a run never says "completed" while invoices of a helper's
chunk are still drafts. Both are session locks on connections of their own, outside any
transaction: a replica that dies takes its locks with it (its chunk in flight rolls back).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Sessions
from storage.invoicing.repository import InvoicingRepository

_NAMESPACE = "billstream.billing_run"
HOLDING = _NAMESPACE  # the lock the run's holder holds (its key's first half)
HELPING = f"{_NAMESPACE}.helping"  # the lock helpers hold shared, the holder exclusive


def _key(namespace: str, tenant_id: str, id: str) -> tuple[Any, Any]:
    """An advisory lock's two-int key: the namespace's hash and the run's."""
    return func.hashtext(namespace), func.hashtext(f"{tenant_id}/{id}")


@dataclass(frozen=True)
class HeldRun:
    tenant_id: str
    id: str
    as_of: datetime
    _conn: AsyncConnection | None = field(default=None, compare=False, repr=False)

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """No replica helps the run until the block ends: waits for the helpers to finish
        their chunks in flight (they hold ``HELPING`` shared) and keeps new ones out."""
        assert self._conn is not None, "only the run's holder waits for its helpers"
        key = _key(HELPING, self.tenant_id, self.id)
        await self._conn.scalar(select(func.pg_advisory_lock(*key)))
        try:
            yield
        finally:
            await self._conn.scalar(select(func.pg_advisory_unlock(*key)))


@asynccontextmanager
async def held_run(sessions: Sessions, *, job: str) -> AsyncIterator[HeldRun | None]:
    """The oldest pending run that no other replica holds (runs ``job`` quarantined are left
    out), held until the block ends; None when there is none."""
    async with _locked_run(sessions, job, _NAMESPACE, shared=False) as run:
        yield run


@asynccontextmanager
async def helped_run(sessions: Sessions, *, job: str) -> AsyncIterator[HeldRun | None]:
    """The oldest pending run (runs ``job`` quarantined are left out) that this replica may
    help, its ``HELPING`` lock held shared until the block ends; None when there is none, or
    when the holder of each is waiting for its helpers to be done (``HeldRun.alone``)."""
    async with _locked_run(sessions, job, HELPING, shared=True) as run:
        yield run


@asynccontextmanager
async def _locked_run(
    sessions: Sessions, job: str, namespace: str, *, shared: bool
) -> AsyncIterator[HeldRun | None]:
    """The oldest pending run whose ``namespace`` lock this replica could take (shared or
    exclusive), on a connection of its own outside any transaction, until the block ends.
    An exclusive holder gets the connection (``HeldRun.alone`` locks on it)."""
    lock, unlock = (
        (func.pg_try_advisory_lock_shared, func.pg_advisory_unlock_shared)
        if shared
        else (func.pg_try_advisory_lock, func.pg_advisory_unlock)
    )
    async with sessions() as session:
        conn = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        repo = InvoicingRepository(session)
        for run in await repo.pending_runs(job=job, limit=8):
            key = _key(namespace, run.tenant_id, run.id)
            if not await conn.scalar(select(lock(*key))):
                continue  # another replica holds it (or its holder is finishing it)
            try:
                # still pending now that it is locked (another replica may have just done it)
                if await repo.run_status(run.tenant_id, run.id) == "pending":
                    yield HeldRun(run.tenant_id, run.id, run.as_of, None if shared else conn)
                    return
            finally:
                await conn.scalar(select(unlock(*key)))
        yield None

"""Holding a requested billing run while it is carried out, without a transaction open.

A replica carrying out a run (minutes at 100,000 subscriptions: many transactions of its
own) holds it with a session-level advisory lock on a connection of its own, outside any
transaction. A transaction held open for the whole run instead (a row lock on the run)
would pin PostgreSQL's xmin horizon: no row deleted or updated meanwhile could be pruned, in
any table, so every chunk and every relay round would read through more dead rows than the
last — the outbox rows the relay publishes and deletes, the subscriptions and drafts the run
rewrites (issue 22). If the worker dies, its connection closes, the lock goes with it and the
run, still pending, is carried out again (periods are never invoiced twice).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from storage.db import Sessions
from storage.invoicing.repository import InvoicingRepository

_NAMESPACE = "billstream.billing_run"


@dataclass(frozen=True)
class HeldRun:
    tenant_id: str
    id: str
    as_of: datetime


@asynccontextmanager
async def held_run(sessions: Sessions, *, job: str) -> AsyncIterator[HeldRun | None]:
    """The oldest pending run that no other replica holds (runs ``job`` quarantined are left
    out), held until the block ends; None when there is none."""
    async with sessions() as session:
        conn = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        candidates = await InvoicingRepository(session).pending_runs(job=job, limit=8)
        for run in candidates:
            key = (func.hashtext(_NAMESPACE), func.hashtext(f"{run.tenant_id}/{run.id}"))
            if not await conn.scalar(select(func.pg_try_advisory_lock(*key))):
                continue  # another replica is carrying it out
            try:
                # still pending now that it is held (another replica may have just done it)
                status = await InvoicingRepository(session).run_status(run.tenant_id, run.id)
                if status == "pending":
                    yield HeldRun(run.tenant_id, run.id, run.as_of)
                    return
            finally:
                await conn.scalar(select(func.pg_advisory_unlock(*key)))
        yield None

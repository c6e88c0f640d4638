"""Checks answered from memory: each customer's ``Snapshot`` kept in the ingress and dropped
the moment PostgreSQL says a row it was read from changed (issue 18).

The read model changes far less often than it is read: a gateway asks on its users' every
request, the worker writes when usage, a subscription, a payment or the tenant's features
change. Every change to a row the check's statement reads is announced on the channel
``NOTIFY_CHANNEL`` by triggers (migration 0032): ``["<tenant>", "<customer>"]``,
``["<tenant>"]`` or ``[]`` (everything). ``SnapshotCache`` listens on one connection of its
own and drops what a notification names.

**A snapshot read at T stays right at any later time until its rows change.** The cache
keeps a customer's snapshot of every feature (``feature=None``) and answers a one-feature
check from it (``only``). What depends on the clock is computed by ``evaluate`` at check
time from rows, not by the statement: a grant counts only while ``starts_at <= now <
expires_at``, usage only that of the period containing ``now``, the grace ends at
``failed_at`` + the grace. The statement's own time filters (``expires_at > at``,
``period_end > at``) only leave out rows that ``evaluate`` skips at ``at`` and at any later
time too. So the cached snapshot and a fresh one give the same answer, byte for byte, as
long as no row changed — and a change is announced.

**Why no change is missed** (the generation). A read takes the generation (a counter bumped
by every notification, by starting to listen and by losing the listener) before its
statement, and stores its result only if the generation is unchanged when it returns and
the cache is listening. A single statement reads one snapshot of the database, taken when
it starts. For a transaction W changing the customer's rows:

- W committed before the statement's snapshot: the read sees W — right whatever happens to
  W's notification (processed before the read began: nothing of W's cached then; during:
  the result is not stored; after: it drops a right entry, harmless);
- W committed after it (the read may not see W): W commits while the cache listens (it
  listened before the read began, or the generation changed and nothing is stored), so
  PostgreSQL delivers W's notification after W's commit. Processed before the read
  returns: the generation changed, the result is answered but not stored. Processed
  after: it drops the entry the read stored. Either way nothing W changed stays cached
  past W's notification.

A notification is delivered only at commit, so a transaction still open never drops
anything it would make stale: its rows are invisible to every read until it commits.
Losing the listener (its connection dropped, PostgreSQL down or restarted) may lose
notifications: everything is dropped, nothing is cached until listening again (tried in the
background on a later check, at most once every ``LISTEN_RETRY_S``; a check never waits
for it). ``MAX_AGE_S`` reads an entry again however quiet the channel: a safety net (a
connection silently cut without a reset), not the mechanism.

**Bounded.** Only customers that exist are kept (an unknown one, a 404, always reads:
probing ids fills nothing). At most ``MAX_ENTRIES`` customers and ``MAX_ROWS`` rows in all
(least recently used out first; a row is about 0.6 kB in memory), and a tenant at most
``1 / TENANT_SHARE`` of each, so one tenant churning through its customers never evicts
everyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.entitlements.snapshot import NOTIFY_CHANNEL, Snapshot, SnapshotReader

log = structlog.get_logger("billstream.entitlements.cache")

#: customers kept at most, in all
MAX_ENTRIES = 50_000
#: rows kept at most, in all (features, subscriptions, grants… of every snapshot)
MAX_ROWS = 250_000
#: a tenant keeps at most 1/TENANT_SHARE of each bound
TENANT_SHARE = 4
#: an entry older than this is read again (a safety net: notifications drop entries)
MAX_AGE_S = 60.0
#: the listener is tried again at most this often
LISTEN_RETRY_S = 1.0
#: longest a connection for the listener may take
LISTEN_CONNECT_TIMEOUT_S = 10.0

Key = tuple[str, str]  # (tenant_id, customer)


def only(snap: Snapshot, feature: str | None) -> Snapshot:
    """``snap`` (read for every feature) as read for ``feature`` alone (None: all):
    ``evaluate`` reads of each feature only its own rows."""
    if feature is None:
        return snap
    return dataclasses.replace(snap, features=tuple(f for f in snap.features if f.key == feature))


def _rows(snap: Snapshot) -> int:
    return 1 + sum(
        map(
            len,
            (
                snap.features,
                snap.subscriptions,
                snap.plan_grants,
                snap.overrides,
                snap.grants,
                snap.usage,
                snap.unpaid,
            ),
        )
    )


@dataclass
class _Entry:
    snap: Snapshot
    stored_at: float
    rows: int


@dataclass
class _Tenant:
    customers: OrderedDict[str, None] = dataclasses.field(default_factory=OrderedDict)  # LRU
    rows: int = 0


class SnapshotCache:
    """``SnapshotReader.read`` answered from memory while it listens (module doc).

    ``read`` has the reader's signature; ``close`` stops listening, drops everything and
    closes the reader. One per process, on one event loop."""

    def __init__(
        self,
        reader: SnapshotReader,
        *,
        max_entries: int = MAX_ENTRIES,
        max_rows: int = MAX_ROWS,
        tenant_share: int = TENANT_SHARE,
        max_age_s: float = MAX_AGE_S,
        retry_s: float = LISTEN_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.max_entries, self.max_rows = max_entries, max_rows
        self.tenant_entries = max(1, max_entries // tenant_share)
        self.tenant_rows = max(1, max_rows // tenant_share)
        self.max_age_s, self.retry_s = max_age_s, retry_s
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()  # least recently used first
        self._tenants: dict[str, _Tenant] = {}
        self._rows = 0
        self.generation = 0  # bumped by every notification, listen and loss of the listener
        self._conn: AsyncConnection | None = None  # the listener's, while listening
        self._driver: Any = None  # its asyncpg connection
        self._connecting: asyncio.Task[None] | None = None
        self._next_try = float("-inf")
        self._closed = False

    # --- what a check calls ---------------------------------------------------------------

    async def read(
        self, tenant_id: str, customer: str, at: datetime, *, feature: str | None = None
    ) -> Snapshot:
        if self._driver is None:
            self._listen_soon()
        key = (tenant_id, customer)
        entry = self._entries.get(key)
        if entry is not None:
            if self._clock() - entry.stored_at < self.max_age_s:
                self._entries.move_to_end(key)
                self._tenants[tenant_id].customers.move_to_end(customer)
                return only(entry.snap, feature)
            self._forget(key)
        generation = self.generation
        snap = await self.reader.read(tenant_id, customer, at)
        if generation == self.generation and self._driver is not None and snap.customer_known:
            self._store(key, snap)
        return only(snap, feature)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        await self._unlisten()
        self._drop_all()
        await self.reader.close()

    # --- what it holds (tests, metrics) -----------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._driver is not None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def rows(self) -> int:
        return self._rows

    def held(self, tenant_id: str) -> tuple[int, int]:
        """(customers, rows) the tenant holds."""
        t = self._tenants.get(tenant_id)
        return (len(t.customers), t.rows) if t else (0, 0)

    # --- entries --------------------------------------------------------------------------

    def _store(self, key: Key, snap: Snapshot) -> None:
        tenant_id, customer = key
        self._forget(key)
        entry = _Entry(snap, self._clock(), _rows(snap))
        if entry.rows > self.tenant_rows:
            return  # larger than a tenant may hold: read every time
        t = self._tenants.setdefault(tenant_id, _Tenant())
        while t.customers and (
            len(t.customers) >= self.tenant_entries or t.rows + entry.rows > self.tenant_rows
        ):
            self._forget((tenant_id, next(iter(t.customers))))
        while self._entries and (
            len(self._entries) >= self.max_entries or self._rows + entry.rows > self.max_rows
        ):
            self._forget(next(iter(self._entries)))
        t = self._tenants.setdefault(tenant_id, _Tenant())  # evicting may have removed it
        self._entries[key] = entry
        t.customers[customer] = None
        t.rows += entry.rows
        self._rows += entry.rows

    def _forget(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        tenant_id, customer = key
        t = self._tenants[tenant_id]
        del t.customers[customer]
        t.rows -= entry.rows
        self._rows -= entry.rows
        if not t.customers:
            del self._tenants[tenant_id]

    def _drop_tenant(self, tenant_id: str) -> None:
        t = self._tenants.pop(tenant_id, None)
        if t is None:
            return
        for customer in t.customers:
            del self._entries[(tenant_id, customer)]
        self._rows -= t.rows

    def _drop_all(self) -> None:
        self._entries.clear()
        self._tenants.clear()
        self._rows = 0

    # --- the listener ---------------------------------------------------------------------

    def _listen_soon(self) -> None:
        """Start listening in the background, unless trying already or tried within
        ``retry_s``: the check that calls this never waits for it."""
        if self._closed or self._connecting is not None:
            return
        now = self._clock()
        if now < self._next_try:
            return
        self._next_try = now + self.retry_s
        self._connecting = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        conn: AsyncConnection | None = None
        try:
            async with asyncio.timeout(LISTEN_CONNECT_TIMEOUT_S):
                conn = await self.reader.engine.connect()
                driver: Any = (await conn.get_raw_connection()).driver_connection
                await driver.add_listener(NOTIFY_CHANNEL, self._notified)
            driver.add_termination_listener(self._lost)
            if driver.is_closed():  # lost before the termination listener was there
                raise ConnectionError("the listener's connection closed while it started")
        except Exception as e:
            log.warning("entitlement checks not cached: cannot listen", error=repr(e))
            if conn is not None:
                await _discard(conn)
            return
        except BaseException:
            if conn is not None:
                await _discard(conn)
            raise
        finally:
            self._connecting = None
        if self._closed:
            await _discard(conn)
            return
        self._conn, self._driver = conn, driver
        self.generation += 1  # reads begun before listening store nothing

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.generation += 1
        try:
            names = json.loads(payload)
        except ValueError:
            names = []
        if isinstance(names, list) and len(names) == 2:
            self._forget((str(names[0]), str(names[1])))
        elif isinstance(names, list) and len(names) == 1:
            self._drop_tenant(str(names[0]))
        else:
            self._drop_all()

    def _lost(self, driver: Any) -> None:
        if driver is not self._driver:
            return
        log.warning("entitlement checks not cached: the listener's connection was lost")
        conn, self._conn, self._driver = self._conn, None, None
        self.generation += 1
        self._drop_all()
        if conn is not None and not self._closed:
            task = asyncio.get_running_loop().create_task(_discard(conn))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

    async def _unlisten(self) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        self.generation += 1
        if driver is not None:
            driver.remove_termination_listener(self._lost)
        if conn is not None:
            await _discard(conn)


_tasks: set[asyncio.Task[None]] = set()  # discards under way (kept from the collector)


async def _discard(conn: AsyncConnection) -> None:
    """Close the listener's connection for good: never back to the pool (it listens)."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()

"""The tick, every ``entitlements_tick_s``: the token signing key rotated when due (the
first tick makes the first), graces that ended, hard limits of ended periods restored,
grants that started or expired, and customers marked stale (a plan's subscribers after its
entitlements changed) — each announced in chunks.

Each part is claimed work of ``runtime.jobs`` (``Jobs.claimed``): a chunk of rows locked
(``SKIP LOCKED``: replicas share the work) and announced in one transaction; a customer
whose data fails permanently is quarantined (kind ``customer``) and everyone else carries
on (ARCHITECTURE §4.7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import structlog

from storage.entitlements import EntitlementRepository, LimitHitRow
from workers.entitlements import service
from workers.entitlements.announce import Key, announce, emit
from workers.entitlements.service import Cause
from workers.entitlements.tokens import rotate
from workers.runtime import Item, Jobs, Tx
from workers.runtime.errors import describe
from workers.settings import Settings

log = structlog.get_logger("billstream.entitlements")

CHUNK = 500  # customers (or rows) per part and transaction
KEYS = "entitlements.signing_key"
GRACES = "entitlements.graces_ended"
LIMITS = "entitlements.limits_reset"
GRANTS = "entitlements.grants_due"
STALE = "entitlements.stale"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _customer(k: Key) -> Item:
    return Item(k[0], "customer", k[1])


def _only(only: Sequence[Item] | None) -> list[Key] | None:
    return None if only is None else [(i.tenant_id, i.id) for i in only]


# --- the signing key --------------------------------------------------------------------------


async def rotate_if_due(tx: Tx, *, settings: Settings, now: datetime) -> str | None:
    current = await tx.repo(EntitlementRepository).current_signing_key()
    age = timedelta(days=settings.entitlements_key_rotation_days)
    if current is not None and current.created_at > now - age:
        return None
    return await rotate(tx, settings, now)


# --- graces that ended --------------------------------------------------------------------------


async def claim_graces(tx: Tx, only: Sequence[Item] | None, *, now: datetime) -> list[Key]:
    return await tx.repo(EntitlementRepository).claim_graces_ended(
        now, CHUNK, job=GRACES, only=_only(only)
    )


async def announce_graces(tx: Tx, customers: Sequence[Key], *, now: datetime) -> int:
    return await announce(tx, dict.fromkeys(customers, Cause()), now)


# --- hard limits of ended periods ------------------------------------------------------------


async def claim_limits(tx: Tx, only: Sequence[Item] | None, *, now: datetime) -> list[LimitHitRow]:
    return await tx.repo(EntitlementRepository).claim_ended_hits(
        now, CHUNK, job=LIMITS, only=_only(only)
    )


def _hit(h: LimitHitRow) -> Item:
    return Item(h.tenant_id, "customer", h.customer)


async def reset_limits(tx: Tx, hits: Sequence[LimitHitRow], *, now: datetime) -> int:
    await tx.repo(EntitlementRepository).restore_hits(hits, now)
    by: dict[Key, list[str]] = {}
    for h in hits:
        by.setdefault((h.tenant_id, h.customer), []).append(h.feature)
    for (t, c), features in by.items():
        emit(tx, t, c, [service.limit_restored(t, c, features, "period_reset", now)])
    return len(hits)


# --- grants that started or expired ----------------------------------------------------------


async def claim_grants(tx: Tx, only: Sequence[Item] | None, *, now: datetime) -> list[Key]:
    return await tx.repo(EntitlementRepository).claim_grants_due(
        now, CHUNK, job=GRANTS, only=_only(only)
    )


async def announce_grants(tx: Tx, customers: Sequence[Key], *, now: datetime) -> int:
    n = await announce(tx, dict.fromkeys(customers, Cause("grant", "grant_expired")), now)
    await tx.repo(EntitlementRepository).grants_announced(customers, now)
    return n


# --- stale customers ---------------------------------------------------------------------------


async def claim_stale(tx: Tx, only: Sequence[Item] | None) -> list[tuple[str, str, str]]:
    return await tx.repo(EntitlementRepository).claim_stale(CHUNK, job=STALE, only=_only(only))


def _stale(s: tuple[str, str, str]) -> Item:
    return Item(s[0], "customer", s[1])


async def announce_stale(tx: Tx, rows: Sequence[tuple[str, str, str]], *, now: datetime) -> int:
    n = await announce(tx, {(t, c): Cause(r, r) for t, c, r in rows}, now)
    await tx.repo(EntitlementRepository).unmark_stale([(t, c) for t, c, _ in rows])
    return n


# --- the tick ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    jobs: Jobs
    settings: Settings
    clock: Clock = utc_now

    async def tick(self) -> bool:
        """One chunk of each part; True when one claimed a full chunk (more is due)."""
        now = self.clock()
        try:
            await self.jobs.run(KEYS, partial(rotate_if_due, settings=self.settings, now=now))
        except Exception as e:  # no tenant's data: logged, and the rest of the tick goes on
            log.error("signing key rotation failed", error=describe(e), exc_info=e)
        steps = [
            await self.jobs.claimed(
                GRACES,
                partial(claim_graces, now=now),
                _customer,
                partial(announce_graces, now=now),
            ),
            await self.jobs.claimed(
                LIMITS, partial(claim_limits, now=now), _hit, partial(reset_limits, now=now)
            ),
            await self.jobs.claimed(
                GRANTS,
                partial(claim_grants, now=now),
                _customer,
                partial(announce_grants, now=now),
            ),
            await self.jobs.claimed(STALE, claim_stale, _stale, partial(announce_stale, now=now)),
        ]
        return any(s.claimed >= CHUNK for s in steps)

"""The inbox: which messages each consumer has already applied.

Key: ``(consumer, message_key)`` where ``message_key`` is a 16-byte BLAKE2b digest of the
CloudEvents identity ``(tenantid, source, id)``. Rows are kept for the dedupe window
(``inbox_retention_days``, at least 32 days), then purged.

The digest is of an unambiguous encoding of the three parts (docs: "Dedupe keys"):

- no part contains U+001F (every real message): ``BLAKE2b(tenantid␟source␟id)``, the
  key every billstream version has written, so rows written before 0011 stay valid;
- a part contains U+001F: ``BLAKE2b`` with its own personalisation over each part's UTF-8
  length (4 bytes, big-endian) and bytes. Joining such parts with ``␟`` was ambiguous:
  (source ``a␟b``, id ``c``) and (source ``a``, id ``b␟c``) were one message.

The two forms cannot meet: a separator-free triple joins to exactly three fields, and the
framed form is a different hash function. While rows written by a version before 0011 may
exist, a message whose parts contain U+001F is also looked up under its old joined key
(:func:`claim`), so a message applied before the upgrade stays a duplicate; that lookup
costs nothing for any other message, and finds nothing once the old rows are purged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import DateTime, LargeBinary, String, delete, func, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base

SEPARATOR = "\x1f"
KEY_SIZE = 16  # bytes of a message key (BLAKE2b-128)
_FRAMED = b"billstream-inbox"  # BLAKE2b personalisation of the framed form (16 bytes)

KEY_COMMENT = (
    "BLAKE2b-128 of tenantid, source, id: joined by U+001F when no part contains it, "
    "else length-prefixed parts (person billstream-inbox)"
)


class InboxEntry(Base):
    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_key: Mapped[bytes] = mapped_column(
        LargeBinary(16), primary_key=True, comment=KEY_COMMENT
    )
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


def framed_digest(parts: Sequence[str], person: bytes) -> bytes:
    """A 16-byte BLAKE2b digest of ``parts``, each length-prefixed (no separator to forge)."""
    h = hashlib.blake2b(digest_size=16, person=person)
    for part in parts:
        raw = part.encode()
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.digest()


class Identity(Protocol):
    """A message's CloudEvents identity (a ``CloudEvent`` is one)."""

    @property
    def tenantid(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def id(self) -> str: ...


def message_keys(tenant_id: str, source: str, message_id: str) -> tuple[bytes, bytes | None]:
    """The inbox key of a message, and the key a version before 0011 gave it when that one
    differs (a part contains U+001F), else None."""
    joined = f"{tenant_id}{SEPARATOR}{source}{SEPARATOR}{message_id}"
    digest = hashlib.blake2b(joined.encode(), digest_size=16).digest()
    if joined.count(SEPARATOR) == 2:
        return digest, None
    return framed_digest((tenant_id, source, message_id), _FRAMED), digest


def message_key(tenant_id: str, source: str, message_id: str) -> bytes:
    return message_keys(tenant_id, source, message_id)[0]


def keys_of(messages: Sequence[Identity]) -> tuple[list[bytes], dict[bytes, bytes]]:
    """The inbox keys of ``messages`` in order, and {key: legacy key} for the (rare) ones
    whose key changed in 0011: what :func:`claim` takes. Hot path: what it costs is what
    the joined keys always cost, plus one C-level count over the batch."""
    sep, blake2b = SEPARATOR, hashlib.blake2b
    joined = [f"{m.tenantid}{sep}{m.source}{sep}{m.id}" for m in messages]
    keys = [blake2b(j.encode(), digest_size=16).digest() for j in joined]
    legacy: dict[bytes, bytes] = {}
    if "".join(joined).count(sep) != 2 * len(joined):  # some part holds the separator
        for n, m in enumerate(messages):
            if joined[n].count(sep) != 2:
                key = framed_digest((m.tenantid, m.source, m.id), _FRAMED)
                legacy[key] = keys[n]
                keys[n] = key
    return keys, legacy


# The keys travel as one bytea of 16-byte keys, and the fresh ones come back as one too:
# an array parameter and a row per returned key cost the worker ~1 µs of CPU a key
# (asyncpg checks each array element's type in Python, SQLAlchemy builds each row);
# these cost ~0.35 µs, most of it the statement's constant part.
_CLAIM = text(
    """
    WITH fresh AS (
        INSERT INTO inbox (consumer, message_key)
        SELECT :consumer, substring(CAST(:keys AS bytea) FROM n * 16 + 1 FOR 16)
        FROM generate_series(0, CAST(:count AS integer) - 1) AS n
        ON CONFLICT DO NOTHING
        RETURNING message_key
    )
    SELECT string_agg(message_key, ''::bytea) FROM fresh
    """
)

# the same, for a batch where some message also has a legacy key: it is fresh only if that
# key is not in the inbox either (rows written before 0011, purged after the dedupe window).
# The old keys are looked up by primary key (= ANY): never a scan of the consumer's inbox,
# however many such messages a tenant sends.
_CLAIM_WITH_LEGACY = text(
    """
    WITH seen AS (
        SELECT message_key FROM inbox
        WHERE consumer = CAST(:consumer AS varchar)
          AND message_key = ANY(CAST(:olds AS bytea[]))
    )
    INSERT INTO inbox (consumer, message_key)
    SELECT CAST(:consumer AS varchar), u.k
    FROM unnest(CAST(:keys AS bytea[]), CAST(:legacy AS bytea[])) AS u(k, l)
    WHERE u.l IS NULL OR u.l NOT IN (SELECT message_key FROM seen)
    ON CONFLICT DO NOTHING
    RETURNING message_key
    """
)


async def claim(
    session: AsyncSession,
    consumer: str,
    keys: list[bytes],
    legacy: Mapping[bytes, bytes] | None = None,
) -> set[bytes]:
    """Record ``keys`` as processed by ``consumer``; return those not seen before.

    ``legacy`` maps a key to the one a version before 0011 gave that message (see
    :func:`keys_of`); a message found under either is a duplicate. One statement for the
    whole batch. Keys are ``KEY_SIZE`` bytes (what :func:`message_keys` makes)."""
    if not keys:
        return set()
    if legacy:
        aligned = [legacy.get(k) for k in keys]
        result = await session.execute(
            _CLAIM_WITH_LEGACY,
            {
                "consumer": consumer,
                "keys": keys,
                "legacy": aligned,
                "olds": [old for old in aligned if old is not None],
            },
        )
        return {row[0] for row in result}
    joined = b"".join(keys)
    if len(joined) != KEY_SIZE * len(keys):
        raise ValueError(f"inbox keys are {KEY_SIZE} bytes each")
    result = await session.execute(
        _CLAIM, {"consumer": consumer, "keys": joined, "count": len(keys)}
    )
    fresh: bytes | None = result.scalar_one()
    if fresh is None:  # every key was seen before
        return set()
    return {fresh[i : i + KEY_SIZE] for i in range(0, len(fresh), KEY_SIZE)}


async def purge(session: AsyncSession, older_than: timedelta) -> int:
    result = await session.execute(
        delete(InboxEntry).where(InboxEntry.processed_at < func.now() - older_than)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def release(session: AsyncSession, consumer: str, keys: list[bytes]) -> None:
    """Forget ``keys`` (a message that was dead-lettered may be applied after a redrive)."""
    await session.execute(
        delete(InboxEntry).where(InboxEntry.consumer == consumer, InboxEntry.message_key.in_(keys))
    )

"""What a handler sees: a batch of decoded messages and one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from aiokafka import ConsumerRecord
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.topics import dlq
from storage import inbox, outbox
from storage.commands import CommandOutcome, CommandRepository
from storage.tenants import TenantRepository
from workers.runtime.errors import PermanentError


class Envelope(inbox.Identity, Protocol):
    """What the runtime reads of a decoded message: its identity (``tenantid``, ``source``,
    ``id``), ``type`` and ``correlationid``. A ``CloudEvent`` is one; so is any leaner record
    a context decodes its hot topic into (metering's ``UsageRecord``)."""

    @property
    def type(self) -> str: ...
    @property
    def correlationid(self) -> str | None: ...


E = TypeVar("E", bound=Envelope)
R = TypeVar("R")

DLQ_HEADER_PREFIX = "billstream-dlq-"


class Message(NamedTuple, Generic[E]):
    """One consumed record and its decoded event. A NamedTuple: a batch builds one per
    record, and a tuple is built in a third of a frozen dataclass's time."""

    record: ConsumerRecord[bytes, bytes]
    event: E

    @property
    def inbox_key(self) -> bytes:
        return inbox.message_key(self.event.tenantid, self.event.source, self.event.id)


Batch = Sequence[Message[E]]


def dead_letter(
    record: ConsumerRecord[bytes, bytes], group: str, reason: str, error: str
) -> outbox.OutgoingMessage:
    """The DLQ copy of ``record``: same key, value and headers, plus why it failed."""
    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
    headers.update(
        {
            f"{DLQ_HEADER_PREFIX}reason": reason[:2000],
            f"{DLQ_HEADER_PREFIX}error": error,
            f"{DLQ_HEADER_PREFIX}topic": record.topic,
            f"{DLQ_HEADER_PREFIX}partition": str(record.partition),
            f"{DLQ_HEADER_PREFIX}offset": str(record.offset),
            f"{DLQ_HEADER_PREFIX}group": group,
            f"{DLQ_HEADER_PREFIX}at": datetime.now(UTC).isoformat(),
        }
    )
    return outbox.OutgoingMessage(dlq(record.topic), record.key, record.value, headers)


def outgoing(event: CloudEvent, *, topic: str, key: str) -> outbox.OutgoingMessage:
    """The outbox row that publishes ``event`` on ``topic`` under ``key``."""
    return encoded(event.to_json(), type=event.type, topic=topic, key=key)


def encoded(value: bytes, *, type: str, topic: str, key: str) -> outbox.OutgoingMessage:
    """The outbox row of an event already encoded as its CloudEvent JSON."""
    return outbox.OutgoingMessage(topic, key.encode(), value, {"ce_type": type})


@dataclass
class Tx:
    """One database transaction for one batch: inbox, effects, outbox, command outcomes."""

    session: AsyncSession
    group: str
    outgoing: list[outbox.OutgoingMessage] = field(default_factory=list)
    outcomes: list[tuple[str, CommandOutcome]] = field(default_factory=list)
    rejected: int = 0
    duplicates: int = 0

    def repo(self, cls: Callable[[AsyncSession], R]) -> R:
        return cls(self.session)

    async def claim(self, batch: Batch[E]) -> list[Message[E]]:
        """The messages of ``batch`` not applied before, in order, now marked as applied.

        Duplicates (earlier batches or within this one) are dropped here. Messages of a
        tenant that does not exist are dead-lettered.
        """
        tenants = await TenantRepository(self.session).existing({m.event.tenantid for m in batch})
        known: list[Message[E]] = []
        for m in batch:
            if m.event.tenantid in tenants:
                known.append(m)
            else:
                self.reject(m, f"unknown tenant {m.event.tenantid!r}", code="unknown_tenant")
        keys, legacy = inbox.keys_of([m.event for m in known])  # a hash each, once per message
        fresh_keys = await inbox.claim(self.session, self.group, keys, legacy)
        fresh: list[Message[E]] = []
        for m, key in zip(known, keys, strict=True):
            if key in fresh_keys:
                fresh_keys.discard(key)  # a second copy in the same batch is a duplicate
                fresh.append(m)
        self.duplicates += len(known) - len(fresh)
        return fresh

    def emit(self, event: CloudEvent, *, topic: str, key: str) -> None:
        """Publish ``event`` after this transaction commits (through the outbox)."""
        self.outgoing.append(outgoing(event, topic=topic, key=key))

    def emit_encoded(self, value: bytes, *, type: str, topic: str, key: str) -> None:
        """``emit`` for an event already encoded as its CloudEvent JSON (hot paths)."""
        self.outgoing.append(encoded(value, type=type, topic=topic, key=key))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction has committed (not if it rolls back):
        e.g. wake an in-process loop that works on what the batch wrote."""
        event.listen(self.session.sync_session, "after_commit", lambda _: callback(), once=True)

    def reject(self, message: Message[Any], reason: str, *, code: str = "rejected") -> None:
        """Dead-letter one message this transaction cannot use; the rest of the batch proceeds.

        Its inbox claim is released, so a redrive after a fix applies it.
        """
        self.outgoing.append(dead_letter(message.record, self.group, reason, code))
        self._release.append(message.inbox_key)
        self.rejected += 1

    @asynccontextmanager
    async def command(self, command: Message[Any] | CloudEvent) -> AsyncIterator[dict[str, Any]]:
        """Run one command's effects in a savepoint and record its outcome (``command``: as
        consumed, or the command itself when a job carries it out later).

        A ``PermanentError`` from the domain rolls the savepoint back (nothing half-written)
        and marks the command failed with the error; success marks it succeeded with the
        dict the body filled in as its result. Anything else propagates to the runtime.
        """
        event = command.event if isinstance(command, Message) else command
        result: dict[str, Any] = {}
        emitted = len(self.outgoing)
        try:
            async with self.session.begin_nested():
                yield result
        except PermanentError as e:
            del self.outgoing[emitted:]  # events of a failed command are never published
            outcome = CommandOutcome(event.tenantid, event.id, "failed", error=e.to_problem())
        else:
            outcome = CommandOutcome(event.tenantid, event.id, "succeeded", result=result)
        self.outcomes.append((event.type, outcome))

    async def flush(self) -> None:
        """Write what the batch produced besides its effects (called by the runtime)."""
        if self._release:
            await inbox.release(self.session, self.group, self._release)
        await outbox.add(self.session, self.outgoing)
        await CommandRepository(self.session).complete(self.outcomes)

    def __post_init__(self) -> None:
        self._release: list[bytes] = []

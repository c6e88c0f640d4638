"""An in-memory unit of work for unit tests of handlers (cosmicpython's fake UoW).

``MemoryTx`` is a ``Tx`` without a database: ``repo(cls)`` returns the fake registered
for ``cls``, the inbox is a set, emitted events and command outcomes are kept in lists,
and ``commit()`` runs the after-commit callbacks. A handler that reaches for
``tx.session`` fails loudly: handlers go through repositories only.

    tx = MemoryTx({InvoicingRepository: FakeInvoicing()})
    await commands.handle(cmd, tx)
    assert [e.type for e in tx.events] == ["invoice.created"]
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar, cast

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from storage.commands import CommandOutcome
from workers.runtime.errors import PermanentError
from workers.runtime.tx import Batch, Envelope, Message, Tx

E = TypeVar("E", bound=Envelope)
C = TypeVar("C", bound=CloudEvent)
R = TypeVar("R")


class _NoSession:
    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(
            f"a handler used tx.session.{name}: handlers reach the database through "
            "tx.repo(...) only (register a fake repository with MemoryTx)"
        )


def message(event: C, *, topic: str = "test", offset: int = 0) -> Message[C]:
    """``event`` as the runtime hands it to a handler, read off ``topic``."""
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic, 0, offset, 0, 0, event.tenantid.encode(), event.to_json(), None, 0, 0, []
    )
    return Message(record, event)


class MemoryTx(Tx):
    def __init__(
        self,
        repos: Mapping[type[Any], object] | None = None,
        *,
        group: str = "test",
        inbox: set[tuple[str, str, str]] | None = None,
        tenants: set[str] | None = None,
    ) -> None:
        super().__init__(cast(AsyncSession, _NoSession()), group)
        self.repos = dict(repos or {})
        self.inbox = inbox if inbox is not None else set()
        self.tenants = tenants  # None: every tenant exists
        self.callbacks: list[Callable[[], None]] = []

    def repo(self, cls: Callable[[AsyncSession], R]) -> R:
        try:
            return cast(R, self.repos[cast(type[Any], cls)])
        except KeyError:
            name = getattr(cls, "__name__", repr(cls))
            raise AssertionError(f"no fake registered for {name}") from None

    async def claim(self, batch: Batch[E]) -> list[Message[E]]:
        fresh: list[Message[E]] = []
        for m in batch:
            if self.tenants is not None and m.event.tenantid not in self.tenants:
                self.reject(m, f"unknown tenant {m.event.tenantid!r}", code="unknown_tenant")
                continue
            key = (m.event.tenantid, m.event.source, m.event.id)
            if key in self.inbox:
                self.duplicates += 1
                continue
            self.inbox.add(key)
            fresh.append(m)
        return fresh

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def reject(self, message: Message[Any], reason: str, *, code: str = "rejected") -> None:
        super().reject(message, reason, code=code)
        self._release.clear()
        self.inbox.discard((message.event.tenantid, message.event.source, message.event.id))

    @asynccontextmanager
    async def command(self, command: Message[Any] | CloudEvent) -> AsyncIterator[dict[str, Any]]:
        """As ``Tx.command``, without a savepoint: a fake repository is not rolled back, so
        a test of a failing command asserts on the outcome and the events, not the fakes."""
        event = command.event if isinstance(command, Message) else command
        result: dict[str, Any] = {}
        emitted = len(self.outgoing)
        try:
            yield result
        except PermanentError as e:
            del self.outgoing[emitted:]
            self.outcomes.append(
                (
                    event.type,
                    CommandOutcome(event.tenantid, event.id, "failed", error=e.to_problem()),
                )
            )
        else:
            self.outcomes.append(
                (event.type, CommandOutcome(event.tenantid, event.id, "succeeded", result=result))
            )

    async def flush(self) -> None:
        """Nothing to write: what the batch produced stays in the lists."""

    def commit(self) -> None:
        """What the runtime does once the transaction committed: run the after-commit
        callbacks."""
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events emitted (not dead letters), decoded, in order."""
        return [json.loads(m.value) for m in self.outgoing if not m.topic.endswith(".dlq")]

    @property
    def dead_letters(self) -> list[tuple[str, dict[str, str]]]:
        """(topic, headers) of each dead-lettered message."""
        return [(m.topic, m.headers) for m in self.outgoing if m.topic.endswith(".dlq")]

"""The batch consumer every context uses (ARCHITECTURE.md §4).

Per batch: decode → one transaction (inbox claim, the handler's effects, outbox rows,
command outcomes, dead-letter rows) → commit → commit the Kafka offsets. Transient
failures retry with exponential backoff and jitter, forever, never skipping a message.
A batch that fails permanently is split in halves until the poison message is alone;
it goes to ``<topic>.dlq`` (through the outbox, so it is never lost) and the rest proceed.
The next batch is fetched and decoded while one is applied (pipeline.py, ADR 0042).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.topics import DLQ_SUFFIX
from storage import outbox
from storage.commands import CommandOutcome
from workers.runtime import metrics
from workers.runtime.errors import ShuttingDown, describe
from workers.runtime.jobs import JobLoop, Jobs, Tick
from workers.runtime.pipeline import Pipeline
from workers.runtime.transient import retrying
from workers.runtime.tx import Envelope, Message, Tx, dead_letter

E = TypeVar("E", bound=Envelope)
Handler = Callable[[Sequence[Message[E]], Tx], Awaitable[None]]
Decoder = Callable[[bytes], E]

log = structlog.get_logger("billstream.runtime")

DECODE_SLICE = 256  # records decoded between two turns of the event loop (~2 ms)
_new_tuple = tuple.__new__


@dataclass(frozen=True)
class Consumer(Generic[E]):
    topic: str  # the topic, or a label for several (metrics, logs)
    group: str
    decode: Decoder[E]
    handler: Handler[E]
    commands: bool = False  # a command topic: dead-lettered commands are marked failed
    subscribed: tuple[str, ...] = ()  # every topic read; () means just ``topic``

    @property
    def topics(self) -> tuple[str, ...]:
        return self.subscribed or (self.topic,)


@dataclass(frozen=True)
class Decoded(Generic[E]):
    """A batch after decoding: the messages to apply and the DLQ rows of the undecodable."""

    messages: list[Message[E]]
    undecodable: list[outbox.OutgoingMessage]
    decode_s: float


class BatchProcessor(Generic[E]):
    """Applies batches for one consumer. Independent of FastStream, so it is testable."""

    def __init__(
        self,
        consumer: Consumer[E],
        sessions: async_sessionmaker[AsyncSession],
        *,
        retry_initial_s: float,
        retry_max_s: float,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.consumer = consumer
        self.sessions = sessions
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.on_committed = on_committed
        self.stopping = asyncio.Event()
        labels = {"group": consumer.group, "topic": consumer.topic}
        self._m_consumed = metrics.MESSAGES_CONSUMED.labels(**labels)
        self._m_processed = metrics.MESSAGES_PROCESSED.labels(**labels)
        self._m_dedup = metrics.MESSAGES_DEDUPLICATED.labels(**labels)
        self._m_dlq = metrics.MESSAGES_DEAD_LETTERED.labels(**labels)
        self._m_batch = metrics.BATCH_SECONDS.labels(**labels)
        self._m_retries = metrics.TRANSIENT_RETRIES.labels(group=consumer.group)

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Apply ``records`` durably; return only when every one is applied or dead-lettered."""
        await self.apply(await self.decode(records))

    async def decode(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> Decoded[E]:
        """Decode every record; the undecodable become DLQ rows. CPU work only, but it lets
        the event loop run every ``DECODE_SLICE`` records: the batch being applied meanwhile
        (pipeline.py) goes on the moment PostgreSQL answers it."""
        started = time.perf_counter()
        self._m_consumed.inc(len(records))
        decoded: list[Message[E]] = []
        undecodable: list[outbox.OutgoingMessage] = []
        decode, append = self.consumer.decode, decoded.append
        for start in range(0, len(records), DECODE_SLICE):
            if start:
                await asyncio.sleep(0)
            for record in records[start : start + DECODE_SLICE]:
                try:
                    # Message(record, event) without the NamedTuple's __new__, a Python
                    # function (~100 ns a record)
                    append(_new_tuple(Message, (record, decode(record.value))))
                except Exception as e:  # any decoding failure makes this record poison
                    undecodable.append(
                        dead_letter(record, self.consumer.group, describe(e), "undecodable")
                    )
        return Decoded(decoded, undecodable, time.perf_counter() - started)

    async def apply(self, batch: Decoded[E]) -> None:
        """Apply a decoded batch durably: every message applied or dead-lettered."""
        started = time.perf_counter()
        if batch.undecodable and not self._reading_dead_letters(len(batch.undecodable)):
            undecodable = batch.undecodable
            await self._retrying(lambda: self._write_dead_letters(undecodable))
            self._m_dlq.inc(len(undecodable))
            log.warning("dead-lettered undecodable records", count=len(undecodable))
        if batch.messages:
            await self._apply(batch.messages)
        self._m_batch.observe(batch.decode_s + time.perf_counter() - started)

    async def _apply(self, batch: list[Message[E]]) -> None:
        try:
            await self._retrying(lambda: self._transaction(batch))
        except ShuttingDown:
            raise
        except Exception as e:
            if len(batch) == 1:
                await self._dead_letter_one(batch[0], e)
                return
            log.info("batch failed, splitting to isolate the poison message", size=len(batch))
            mid = len(batch) // 2
            await self._apply(batch[:mid])
            await self._apply(batch[mid:])

    async def _transaction(self, batch: list[Message[E]]) -> None:
        tenants = {m.event.tenantid for m in batch}
        structlog.contextvars.bind_contextvars(
            topic=self.consumer.topic,
            batch_size=len(batch),
            tenantid=tenants.pop() if len(tenants) == 1 else "(several)",
        )
        try:
            async with self.sessions() as session, session.begin():
                tx = Tx(session, self.consumer.group)
                await self.consumer.handler(batch, tx)
                await tx.flush()
        finally:
            structlog.contextvars.unbind_contextvars("topic", "batch_size", "tenantid")
        fresh = len(batch) - tx.duplicates - tx.rejected
        self._m_processed.inc(fresh)
        self._m_dedup.inc(tx.duplicates)
        self._m_dlq.inc(tx.rejected)
        if tx.outgoing:
            self.on_committed()

    async def _dead_letter_one(self, message: Message[E], error: Exception) -> None:
        log.error(
            "dead-lettering poison message",
            message_id=message.event.id,
            tenantid=message.event.tenantid,
            correlationid=message.event.correlationid or message.event.id,
            error=describe(error),
            exc_info=error,
        )
        if self._reading_dead_letters(1):
            return
        dlq_row = dead_letter(
            message.record, self.consumer.group, describe(error), type(error).__name__
        )

        async def write() -> None:
            async with self.sessions() as session, session.begin():
                tx = Tx(session, self.consumer.group)
                tx.outgoing.append(dlq_row)
                if self.consumer.commands:
                    tx.outcomes.append(
                        (
                            message.event.type,
                            CommandOutcome(
                                message.event.tenantid,
                                message.event.id,
                                "failed",
                                error={"code": "dead_lettered", "message": describe(error)},
                            ),
                        )
                    )
                await tx.flush()

        await self._retrying(write)
        self._m_dlq.inc()
        self.on_committed()

    def _reading_dead_letters(self, count: int) -> bool:
        """A consumer of dead-letter topics never dead-letters: ``<topic>.dlq.dlq`` does not
        exist, and an outbox row for it would hold up the relay. The record stays where it
        is, in its dead-letter topic; it is skipped here, loudly."""
        if not all(t.endswith(DLQ_SUFFIX) for t in self.consumer.topics):
            return False
        log.error("skipped dead letters this consumer cannot use", count=count)
        return True

    async def _write_dead_letters(self, rows: list[outbox.OutgoingMessage]) -> None:
        async with self.sessions() as session, session.begin():
            await outbox.add(session, rows)
        self.on_committed()

    async def _retrying(self, attempt: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``attempt``; retry transient failures with backoff until it succeeds or we stop."""
        await retrying(
            attempt,
            initial_s=self.retry_initial_s,
            max_s=self.retry_max_s,
            stopping=self.stopping,
            on_retry=self._before_retry,
        )

    def _before_retry(self, attempt: int, error: BaseException) -> None:
        self._m_retries.inc()
        log.warning("transient failure, retrying", attempt=attempt, error=describe(error))


async def _poll(
    subscription: Any, consumer: AIOKafkaConsumer
) -> tuple[ConsumerRecord[Any, Any], ...]:
    """The next batch of ``subscription``: FastStream's batch poll without its pause.

    ``getmany`` returns as soon as records arrive, or empty after ``batch_timeout_ms``;
    FastStream then sleeps as long again, so a record arriving meanwhile waited for the
    sleep. Polling again at once costs nothing more and lets ``batch_timeout_ms`` be long:
    an idle consumer wakes once per timeout, and a record never waits for it."""
    batches = await consumer.getmany(
        timeout_ms=subscription.batch_timeout_ms, max_records=subscription.max_records
    )
    return tuple(chain.from_iterable(batches.values()))


class Runtime:
    """Holds a worker's broker and database, and registers its consumers."""

    def __init__(
        self,
        broker: KafkaBroker,
        sessions: async_sessionmaker[AsyncSession],
        *,
        batch_max_records: int,
        batch_timeout_ms: int,
        retry_initial_s: float,
        retry_max_s: float,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fetch_max_wait_ms: int = 100,
        consumer_timeout_ms: int = 200,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.broker = broker
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.consumer_timeout_ms = consumer_timeout_ms
        self.sessions = sessions
        self.batch_max_records = batch_max_records
        self.batch_timeout_ms = batch_timeout_ms
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.on_committed = on_committed
        self.processors: list[BatchProcessor[Any]] = []
        self.pipelines: list[Pipeline[Any]] = []
        self.loops: list[JobLoop] = []
        self.stopping = asyncio.Event()
        self.jobs = Jobs(
            sessions,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            on_committed=lambda: self.on_committed(),
            stopping=self.stopping,
        )

    def job(
        self,
        name: str,
        tick: Tick,
        *,
        every_s: float,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> JobLoop:
        """Run ``tick`` beside the consumers for as long as the worker runs (a billing
        scheduler, a collector, a sweep, a dispatcher): see ``JobLoop``. Each write of a tick
        is one ``self.jobs`` transaction. Returns the loop, whose ``wake()`` runs the next
        tick at once."""
        loop = JobLoop(name, tick, every_s, self.stopping, close)
        self.loops.append(loop)
        return loop

    def consumer(
        self,
        topic: str | Sequence[str],
        *,
        group: str,
        decode: Decoder[E],
        commands: bool = False,
        label: str | None = None,
    ) -> Callable[[Handler[E]], Handler[E]]:
        """Register ``handler`` for batches of ``topic`` in consumer group ``group``.

        Several topics (with a ``label`` naming them in metrics and logs) share one group
        and one handler; a batch may then mix them (``message.record.topic`` tells)."""
        names = (topic,) if isinstance(topic, str) else tuple(topic)
        name = names[0] if len(names) == 1 else (label or ",".join(names))

        def register(handler: Handler[E]) -> Handler[E]:
            processor = BatchProcessor(
                Consumer(name, group, decode, handler, commands, names if len(names) > 1 else ()),
                self.sessions,
                retry_initial_s=self.retry_initial_s,
                retry_max_s=self.retry_max_s,
                on_committed=lambda: self.on_committed(),
            )
            self.processors.append(processor)
            pipeline = Pipeline(processor)
            self.pipelines.append(pipeline)

            async def noop_decoder(msg: Any) -> None:
                return None

            subscription = self.broker.subscriber(
                *names,
                group_id=group,
                batch=True,
                max_records=self.batch_max_records,
                batch_timeout_ms=self.batch_timeout_ms,
                auto_offset_reset="earliest",
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                consumer_timeout_ms=self.consumer_timeout_ms,
                ack_policy=AckPolicy.MANUAL,
                decoder=noop_decoder,
                title=f"{group}--{name}",  # AsyncAPI ids allow [A-Za-z0-9._-] only
                description=inspect.getdoc(handler),  # indentation-free, wherever defined
            )
            subscription.get_msg = partial(_poll, subscription)  # type: ignore[method-assign]

            @subscription
            async def subscriber(message: KafkaMessage) -> None:
                # message.consumer is the subscriber's AIOKafkaConsumer
                await pipeline.submit(message.raw_message, message.consumer)

            return handler

        return register

    def stop_processing(self) -> None:
        """No new transaction starts (a retrying one gives up), no job starts a new tick;
        see ``drain``."""
        self.stopping.set()
        for p in self.processors:
            p.stopping.set()
        for loop in self.loops:
            loop.wake()

    async def drain(self) -> None:
        """Wait for the batches in flight to commit (with their offsets) or give up."""
        await asyncio.gather(*(p.drain() for p in self.pipelines))

"""The outbox relay against the real broker and PostgreSQL: each worker's relay publishes
the rows its worker wrote (and rows of no worker), never another worker's, while another
worker's relay is busy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from storage import outbox
from storage.db import create_engine, session_factory
from tests.integration.support import Sessions, read_topic
from workers.devstack import wait_for
from workers.runtime.publisher import Record, RecordPublisher
from workers.runtime.relay import OutboxRelay
from workers.runtime.topics import ensure_topics
from workers.settings import Settings

TOPIC = "test.relay.v1"


def row(n: int) -> outbox.OutgoingMessage:
    return outbox.OutgoingMessage(TOPIC, b"k", json.dumps({"n": n}).encode(), {})


async def test_each_worker_relays_its_own_rows_and_rows_of_no_worker(settings: Settings) -> None:
    await ensure_topics(settings.kafka_bootstrap, partitions=1, replication=1, names=[TOPIC])
    engine = create_engine(settings.database_url)
    metering, alerts, cli = (session_factory(engine, relay=r) for r in ("metering", "alerts", ""))
    publisher = RecordPublisher(settings, client_id="test-relay")
    try:
        for sessions, ns in ((metering, [1, 2]), (alerts, [3]), (cli, [4])):
            async with sessions() as session, session.begin():
                await outbox.add(session, [row(n) for n in ns])

        def relay(sessions: Sessions) -> OutboxRelay:
            return OutboxRelay(publisher, sessions, poll_interval_s=1, batch=100)

        # while the metering relay holds its lock (its transaction is open), the alerts
        # relay still publishes: its own row and the row of no worker, not metering's
        async with metering() as held, held.begin():
            assert await outbox.try_lock_relay(held)
            assert await relay(alerts).publish_once() == 2
            assert await relay(metering).publish_once() == 0  # its lock is held
        published = [json.loads(r.value)["n"] for r in await read_topic(settings, TOPIC, 2)]
        assert sorted(published) == [3, 4]
        assert await relay(metering).publish_once() == 2  # metering's, in order
        published = [json.loads(r.value)["n"] for r in await read_topic(settings, TOPIC, 4)]
        assert published[2:] == [1, 2]  # one partition: metering's rows in id order
        assert await relay(alerts).publish_once() == 0
    finally:
        await publisher.stop()
        await engine.dispose()


async def test_rows_of_a_stopped_worker_are_published_by_another_once_they_waited(
    settings: Settings,
) -> None:
    await ensure_topics(settings.kafka_bootstrap, partitions=1, replication=1, names=[TOPIC])
    engine = create_engine(settings.database_url)
    stopped, alerts = (session_factory(engine, relay=r) for r in ("invoicing", "alerts"))
    publisher = RecordPublisher(settings, client_id="test-relay")
    try:
        async with stopped() as session, session.begin():
            await outbox.add(session, [row(n) for n in (1, 2, 3)])

        def relay(adopt_after_s: float) -> OutboxRelay:
            return OutboxRelay(
                publisher, alerts, poll_interval_s=0.05, batch=2, adopt_after_s=adopt_after_s
            )

        assert await relay(3600).adopt_once() == 0  # not waited long enough
        assert await relay(3600).publish_once() == 0  # never another worker's rows otherwise
        # a worker in the middle of its own round (its lock held) keeps its rows
        async with stopped() as held, held.begin():
            assert await outbox.try_lock_relay(held)
            assert await relay(0.001).adopt_once() == 0

        # its worker is stopped: another worker's relay loop publishes them, in order
        async def drained() -> bool:
            async with alerts() as session:
                return await outbox.backlog(session) == (0, None)

        adopting = relay(0.001)
        adopting.start()
        try:
            await wait_for(drained)
        finally:
            await adopting.stop()  # also stops the shared publisher
        published = [json.loads(r.value)["n"] for r in await read_topic(settings, TOPIC, 3)]
        assert published == [1, 2, 3]
    finally:
        await publisher.stop()
        await engine.dispose()


class _HeldPublisher(RecordPublisher):
    """Publishes when the test lets it: a round is in flight until then."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, client_id="test-relay-held")
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def publish(self, records: Sequence[Record]) -> None:
        self.entered.set()
        await self.release.wait()
        await super().publish(records)


async def test_a_relay_stopped_mid_round_finishes_it_and_publishes_each_row_once(
    settings: Settings,
) -> None:
    """A worker stopping while its relay publishes: the round in flight completes (its rows
    published and deleted together), so no row goes out twice (a cancelled round's rows
    were on the wire and still in the outbox)."""
    await ensure_topics(settings.kafka_bootstrap, partitions=1, replication=1, names=[TOPIC])
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine, relay="receipts")
    publisher = _HeldPublisher(settings)
    relay = OutboxRelay(publisher, sessions, poll_interval_s=0.05, batch=100)
    try:
        async with sessions() as session, session.begin():
            await outbox.add(session, [row(n) for n in (1, 2, 3)])
        relay.start()
        await asyncio.wait_for(publisher.entered.wait(), 10)
        stopping = asyncio.create_task(relay.stop())
        await asyncio.sleep(0)  # the stop has begun: it waits for the round
        assert not stopping.done()
        publisher.release.set()
        await asyncio.wait_for(stopping, 20)
        async with sessions() as session:
            assert await outbox.pending(session, 100) == []  # deleted with the round
        published = [json.loads(r.value)["n"] for r in await read_topic(settings, TOPIC, 3)]
        assert published == [1, 2, 3]
    finally:
        await publisher.stop()
        await engine.dispose()


async def test_a_relay_takes_its_oldest_rows_and_rows_of_no_worker_in_commit_order(
    settings: Settings,
) -> None:
    """``pending``: a worker's rows and rows of no worker merged in id (commit) order, at most
    ``limit``, another worker's never — however the two kinds interleave."""
    engine = create_engine(settings.database_url)
    sessions = {r: session_factory(engine, relay=r) for r in ("usage-x", "alerts-x", "")}
    try:
        order = ["usage-x", "", "alerts-x", "", "usage-x", "usage-x", "alerts-x", "", "usage-x"]
        for n, relay in enumerate(order):
            async with sessions[relay]() as session, session.begin():
                await outbox.add(session, [row(1000 + n)])
        mine = [1000 + n for n, r in enumerate(order) if r in ("usage-x", "")]
        async with sessions["usage-x"]() as session, session.begin():
            for limit in (1, 3, 5, 100):
                taken = await outbox.pending(session, limit)
                got = [json.loads(m.value)["n"] for m in taken if m.topic == TOPIC]
                assert got == mine[:limit], limit
            await outbox.remove(session, [m.id for m in await outbox.pending(session, 100)])
        async with sessions["alerts-x"]() as session, session.begin():
            taken = await outbox.pending(session, 100)
            assert [json.loads(m.value)["n"] for m in taken if m.topic == TOPIC] == [1002, 1006]
            await outbox.remove(session, [m.id for m in taken])
    finally:
        await engine.dispose()

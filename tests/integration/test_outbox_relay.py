"""The outbox relay against the real broker and PostgreSQL: each worker's relay publishes
the rows its worker wrote (and rows of no worker), never another worker's, while another
worker's relay is busy."""

from __future__ import annotations

import json

from storage import outbox
from storage.db import create_engine, session_factory
from tests.integration.support import Sessions, read_topic
from workers.runtime.publisher import RecordPublisher
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

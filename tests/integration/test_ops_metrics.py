"""A running worker's ``/metrics``, scraped and parsed as Prometheus text, counts what it
did; ``/readyz`` turns 503 naming the dependency when the broker or the database goes."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from schemas import groups, topics
from tests.conftest import PgServer, TenantKey
from tests.integration.support import (
    Sessions,
    insert_meters,
    producer,
    read_topic,
    running,
    send_usage,
    usage,
    wait_committed_to_end,
    wait_outbox_drained,
)
from workers.devstack import EmbeddedKafka, free_port, wait_for
from workers.metering.app import build
from workers.runtime.topics import ensure_topics
from workers.settings import Settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient) -> tuple[set[str], Samples]:
    r = await http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(r.text))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_worker_metrics_count_consumed_processed_deduplicated_and_dead_lettered(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    await insert_meters(
        sessions, "acme", [{"key": "calls", "event_type": "api.call", "aggregation": "count"}]
    )
    worker = build(settings.model_copy(update={"metrics_port": free_port()}))
    async with running(worker), producer(settings) as p:
        assert worker.health is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.health.port}") as http:
            names, before = await scrape(http)
            assert {
                "billstream_messages_consumed",
                "billstream_messages_processed",
                "billstream_messages_deduplicated",
                "billstream_messages_dead_lettered",
                "billstream_batch_seconds",
                "billstream_outbox_backlog",
                "billstream_outbox_oldest_age_seconds",
                "billstream_webhook_deliveries",
                "billstream_consumer_lag",
            } <= names
            e1, e2, e3 = (usage("acme", f"m-{i}") for i in range(3))
            unusable = usage("acme", "m-x", type="nobody.reads.this")
            await send_usage(p, [e1, e2, e3, e1, unusable])
            await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
            await read_topic(settings, topics.dlq(topics.USAGE), 1)
            await wait_outbox_drained(sessions)

            labels = {"group": groups.METERING_USAGE, "topic": topics.USAGE}

            async def counted() -> Samples | None:
                _, after = await scrape(http)
                delta = value(after, "billstream_messages_consumed_total", **labels) - value(
                    before, "billstream_messages_consumed_total", **labels
                )
                return after if delta == 5 else None

            after = await wait_for(counted, timeout_s=10)

            def grew(name: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            assert grew("billstream_messages_processed_total") == 3
            assert grew("billstream_messages_deduplicated_total") == 1
            assert grew("billstream_messages_dead_lettered_total") == 1
            assert grew("billstream_batch_seconds_count") >= 1
            assert value(after, "billstream_outbox_published_total") >= 1

            async def backlog_gauge_zero() -> bool:
                _, now = await scrape(http)
                return value(now, "billstream_outbox_backlog") == 0 and (
                    value(now, "billstream_outbox_oldest_age_seconds") == 0
                )

            await wait_for(backlog_gauge_zero, timeout_s=15)


async def test_readyz_reflects_the_broker_and_the_database(
    settings: Settings, pg_server: PgServer, database_url: str, tmp_path: Path
) -> None:
    broker = EmbeddedKafka(log_path=tmp_path / "own-broker.log").start()
    try:
        await ensure_topics(broker.bootstrap, partitions=1, replication=1)
        own = settings.model_copy(
            update={
                "kafka_bootstrap": broker.bootstrap,
                "metrics_port": free_port(),
                "graceful_timeout_s": 1.0,  # the broker will be gone when it stops
            }
        )
        worker = build(own)
        async with running(worker):
            assert worker.health is not None
            base = f"http://127.0.0.1:{worker.health.port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.json()) == (
                    200,
                    {"status": "ok", "database": "ok", "broker": "ok"},
                )
                broker.stop()

                async def broker_down() -> httpx.Response | None:
                    r = await http.get("/readyz")
                    return r if r.status_code == 503 else None

                down = await wait_for(broker_down, timeout_s=20)
                assert down.json()["broker"] == "unavailable"
                assert down.json()["database"] == "ok"
                assert (await http.get("/healthz")).status_code == 200  # alive, not ready

                await pg_server.drop_database(database_url.rsplit("/", 1)[1].split("?")[0])
                r = await http.get("/readyz")
                assert r.status_code == 503
                assert r.json()["database"].startswith("unavailable")
    finally:
        broker.stop()

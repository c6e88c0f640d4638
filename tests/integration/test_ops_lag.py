"""``billstream lag`` against a known backlog: committed offset, end offset and lag per
partition, right on the embedded broker too (whose ListOffsets undercounts batched
partitions), and the same numbers as Prometheus gauges, printed and served."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from schemas import groups, topics
from workers.devstack import free_port, wait_for
from workers.ops.inventory import consumers
from workers.ops.lag import LagRow, measure, pairs_of, prometheus_text
from workers.settings import Settings

GROUP = groups.METERING_USAGE


async def backlog(settings: Settings) -> None:
    """Partition 0: 5 records (one batch), partition 1: 3, partition 2: none; the group has
    committed 2 on partition 0 and nothing elsewhere."""
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=50)
    await p.start()
    try:
        futures = [await p.send(topics.USAGE, b"{}", partition=0) for _ in range(5)]
        futures += [await p.send(topics.USAGE, b"{}", partition=1) for _ in range(3)]
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await c.start()
    try:
        tp0 = TopicPartition(topics.USAGE, 0)
        c.assign([tp0])
        await c.commit({tp0: 2})
    finally:
        await c.stop()


def lag_samples(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            ours = s.labels.get("group") == GROUP and s.labels.get("topic") == topics.USAGE
            if ours and s.name.startswith("billstream_consumer_"):
                out[(s.name.removeprefix("billstream_consumer_"), s.labels["partition"])] = s.value
            if s.name == "billstream_topic_end_offset" and s.labels["topic"] == topics.USAGE:
                out[("end", s.labels["partition"])] = s.value
    return out


EXPECTED = {
    ("lag", "0"): 3.0,
    ("lag", "1"): 3.0,
    ("lag", "2"): 0.0,
    ("committed_offset", "0"): 2.0,
    ("committed_offset", "1"): -1.0,
    ("committed_offset", "2"): -1.0,
    ("end", "0"): 5.0,
    ("end", "1"): 3.0,
    ("end", "2"): 0.0,
}


async def test_lag_reports_committed_end_and_lag_per_partition_and_as_gauges(
    settings: Settings,
) -> None:
    await backlog(settings)
    rows = await measure(settings, [(GROUP, topics.USAGE)])
    assert rows == [
        LagRow(GROUP, topics.USAGE, 0, 2, 0, 5),
        LagRow(GROUP, topics.USAGE, 1, None, 0, 3),
        LagRow(GROUP, topics.USAGE, 2, None, 0, 0),
    ]
    assert [r.lag for r in rows] == [3, 3, 0]
    assert lag_samples(prometheus_text(rows)) == EXPECTED


async def test_lag_command_prints_and_serves_the_same_numbers(settings: Settings) -> None:
    await backlog(settings)
    env = {
        **os.environ,
        "BILLSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BILLSTREAM_DATABASE_URL": settings.database_url,
        "BILLSTREAM_LOG_LEVEL": "WARNING",
    }
    args = [sys.executable, "-m", "workers.cli", "lag", "--group", GROUP, "--topic", topics.USAGE]
    proc = await asyncio.create_subprocess_exec(
        *args, "--json", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert [(r["partition"], r["committed"], r["end"], r["lag"]) for r in json.loads(out)] == [
        (0, 2, 5, 3),
        (1, None, 3, 3),
        (2, None, 0, 0),
    ]

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        *args, "--serve", str(port), "--interval", "0.2", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def scraped() -> dict[tuple[str, str], float] | None:
                try:
                    r = await http.get("/metrics")
                except httpx.TransportError:
                    return None
                samples = lag_samples(r.text)
                return samples if samples == EXPECTED else None

            assert await wait_for(scraped, timeout_s=30, interval_s=0.1) == EXPECTED
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["broker"] == "ok"
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(server.communicate(), 30)
    assert server.returncode == 0, err.decode()


async def test_the_groups_measured_by_default_are_the_ones_the_workers_run(
    settings: Settings,
) -> None:
    found = await consumers(settings, ["metering", "pos"])
    assert {(c.group, c.topic) for c in found} >= {
        (GROUP, topics.USAGE),
        (groups.METERING_COMMANDS, topics.COMMANDS_METERING),
        (groups.POS_RECEIPTS, topics.INTEGRATIONS_POS),
        (groups.POS_COMMANDS, topics.COMMANDS_POS),
    }
    assert {c.worker for c in found if c.topic == topics.INTEGRATIONS_POS} == {"pos"}
    assert pairs_of(found, topic=topics.USAGE) == [(GROUP, topics.USAGE)]
    assert pairs_of(found, group="other", topic="t") == [("other", "t")]

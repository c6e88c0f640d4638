"""kill -9 the metering worker, again and again, while it works through a backlog:
after a final run the totals are exact (nothing lost, nothing counted twice)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas import topics
from tests.conftest import TenantKey
from tests.integration.support import (
    T0,
    Sessions,
    bulk_record,
    inbox_count,
    insert_meters,
    producer,
    send_records,
    topic_size,
    total,
    wait_committed_to_end,
    worker_env,
)
from workers.devstack import wait_for
from workers.metering.handlers import USAGE_GROUP
from workers.settings import Settings

N = 60_000  # distinct events
USERS = 997
METERS = [
    {"key": "calls", "event_type": "api.call", "aggregation": "count"},
    {"key": "spend", "event_type": "api.call", "aggregation": "sum", "value_property": "$.amount"},
    {
        "key": "users",
        "event_type": "api.call",
        "aggregation": "unique_count",
        "value_property": "$.user",
    },
]


def amount(i: int) -> str:
    return f"{i % 1000}.{i % 7:02d}"  # decimals: a float anywhere would show


@contextlib.contextmanager
def worker_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "metering"],
            env=worker_env(settings),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def counted(sessions: Sessions) -> int:
    """Events applied so far, read straight from the hourly buckets."""
    async with sessions() as session:
        n = await session.scalar(
            text(
                "SELECT coalesce(sum(u.count), 0) FROM usage_hourly u "
                "JOIN meters m ON m.id = u.meter_id WHERE m.key = 'calls'"
            )
        )
        return int(n or 0)


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart_loses_nothing_and_counts_nothing_twice(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    meters = await insert_meters(sessions, "acme", METERS)
    records = [
        bulk_record(
            "acme",
            f"e{i}",
            f"cust-{i % 50}",
            T0 + i * timedelta(seconds=7),
            amount(i),
            user=f"u{i % USERS}",
        )
        for i in range(N)
    ]
    records += records[::10]  # 6,000 duplicates, redelivered after the originals
    async with producer(settings) as p:
        await send_records(p, topics.USAGE, records)

    small_batches = settings.model_copy(update={"batch_max_records": 1_000})
    log = tmp_path / "worker.log"
    progress: list[int] = []
    for fraction in (0.15, 0.45, 0.75):
        with worker_process(small_batches, log) as proc:

            async def moved(threshold: int = int(N * fraction)) -> bool:
                assert proc.poll() is None, f"worker exited: {log.read_text()[-3000:]}"
                return await counted(sessions) >= threshold

            await wait_for(moved, timeout_s=60, interval_s=0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        progress.append(await counted(sessions))
        assert progress[-1] < N, "killed after it had finished: the kill proved nothing"
    assert progress == sorted(progress)

    with worker_process(small_batches, log) as proc:
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE, timeout_s=90)
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, timeout_s=20)
        assert proc.returncode == 0, log.read_text()[-3000:]

    assert await inbox_count(sessions, USAGE_GROUP) == N
    assert await total(sessions, meters["calls"]) == N
    assert await total(sessions, meters["spend"]) == sum(Decimal(amount(i)) for i in range(N))
    assert await total(sessions, meters["users"]) == USERS
    assert await topic_size(settings, topics.dlq(topics.USAGE)) == 0

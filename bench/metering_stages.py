"""Where one metering batch spends its time, stage by stage (in-process, no Kafka).

    python bench/metering_stages.py [--events N] [--batch B] [--cprofile FILE] [--cpu-only]

Feeds pre-built Kafka records straight into the metering worker's ``BatchProcessor``
(the code a real worker runs for each batch, minus FastStream and the fetch) against an
embedded PostgreSQL, and times every stage: decode, tenant check + inbox claim, meter
lookup, aggregation, the usage upsert, the outbox/outcome flush and the commit.

Wall-clock times include waiting for PostgreSQL; the CPU column is this process only.
``--cpu-only`` times the pure-CPU stages alone, without PostgreSQL (decode into the
runtime's messages, inbox keys, aggregation), best of ``--rounds``: the steadiest A/B.
Complements bench/metering.py (end-to-end, one worker process, through Kafka).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import inspect
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from aiokafka.structs import ConsumerRecord

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.metering import EVENT_TYPE, METER_KEY, TENANT, make_workload, prepare_database
from schemas import topics
from storage import inbox
from storage import metering as storage_metering
from storage import tenants as storage_tenants
from storage.db import create_engine, session_factory
from workers.devstack import EmbeddedPostgres
from workers.metering import handlers, service
from workers.runtime import consumer as runtime_consumer
from workers.runtime import tx as runtime_tx
from workers.settings import Settings

WALL: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)
_gc_started: list[float] = []


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    """Time the cyclic garbage collector (it runs inside whatever stage allocates)."""
    if phase == "start":
        _gc_started[:] = [time.perf_counter(), time.process_time()]
    elif _gc_started:
        label = f"gc gen{info['generation']} (inside the stages)"
        WALL[label] += time.perf_counter() - _gc_started[0]
        CPU[label] += time.process_time() - _gc_started[1]


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*a: Any, **k: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return await fn(*a, **k)
            finally:
                WALL[label] += time.perf_counter() - w
                CPU[label] += time.process_time() - c

        return awrapper

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            WALL[label] += time.perf_counter() - w
            CPU[label] += time.process_time() - c

    return wrapper


def instrument() -> None:
    """Wrap each stage where the handler and the runtime look it up."""
    # the decoder is captured by handlers.register: wrap it before registering
    service.decode_usage = timed("1 decode (JSON + checks)", service.decode_usage)
    storage_tenants.TenantRepository.existing = timed(
        "2 tenant check (SELECT)", storage_tenants.TenantRepository.existing
    )
    runtime_tx.inbox.claim = timed("3 inbox claim (INSERT..RETURNING)", inbox.claim)
    storage_metering.MeterRepository.for_event_types = timed(
        "4 meter lookup (SELECT)", storage_metering.MeterRepository.for_event_types
    )
    service.aggregate = timed("5 aggregate (pure Python)", service.aggregate)
    storage_metering.UsageRepository.apply = timed(
        "6 usage upsert (unnest)", storage_metering.UsageRepository.apply
    )
    runtime_tx.Tx.flush = timed("7 flush outbox/outcomes", runtime_tx.Tx.flush)
    runtime_consumer.BatchProcessor._transaction = timed(
        "T transaction total (begin..commit)", runtime_consumer.BatchProcessor._transaction
    )
    runtime_consumer.BatchProcessor.process = timed(
        "P process total", runtime_consumer.BatchProcessor.process
    )


class _FakeRuntime:
    """Collects the handler ``handlers.register`` defines, with its decoder."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[Any, Any]] = {}

    def consumer(self, topic: str, *, group: str, decode: Any, commands: bool = False) -> Any:
        def register(handler: Any) -> Any:
            self.found[topic] = (decode, handler, group, commands)
            return handler

        return register


async def cpu_only(args: argparse.Namespace) -> None:
    """Decode (with the runtime's Message per record), inbox keys and aggregation of every
    batch, no database: CPU µs/event of each, best of ``args.rounds`` rounds."""
    workload = make_workload(args.events, args.subjects, args.dup_rate, 4.0, 4)
    meters = [
        service.MeterDef(
            "m", TENANT, METER_KEY, EVENT_TYPE, "sum", "$.tokens", {"model": "$.model"}
        )
    ]
    records = [
        ConsumerRecord(topics.USAGE, 0, i, 0, 0, k, v, None, len(k), len(v), [])
        for i, (k, v) in enumerate(workload.records)
    ]

    async def unused(batch: Any, tx: Any) -> None:  # the stages before the transaction only
        raise AssertionError

    processor = runtime_consumer.BatchProcessor(
        runtime_consumer.Consumer(topics.USAGE, "stages", service.decode_usage, unused),
        cast(Any, None),  # no database
        retry_initial_s=0.2,
        retry_max_s=1.0,
    )
    n = len(records)
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 10)  # the worker's (workers/runtime/app.py)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        spent = {"decode": 0.0, "inbox keys": 0.0, "aggregate": 0.0}
        for start in range(0, n, args.batch):
            c0 = time.process_time()
            decoded = await processor.decode(records[start : start + args.batch])
            c1 = time.process_time()
            events = [m.event for m in decoded.messages]
            inbox.keys_of(events)
            c2 = time.process_time()
            service.aggregate(events, meters)
            c3 = time.process_time()
            spent["decode"] += c1 - c0
            spent["inbox keys"] += c2 - c1
            spent["aggregate"] += c3 - c2
        if not best or sum(spent.values()) < sum(best.values()):
            best = spent
    print(f"{n:,} records, batches of ≤{args.batch}, best of {args.rounds} (CPU µs/event):")
    for label, seconds in best.items():
        print(f"  {label:<12} {seconds / n * 1e6:6.2f}")
    print(f"  {'total':<12} {sum(best.values()) / n * 1e6:6.2f}")


async def main(args: argparse.Namespace) -> None:
    instrument()
    workload = make_workload(args.events, args.subjects, args.dup_rate, 4.0, 4)
    n = len(workload.records)

    def batch_of(start: int) -> list[ConsumerRecord[bytes, bytes]]:
        """Records are built per batch, as a real fetch does (not held across batches)."""
        return [
            ConsumerRecord(topics.USAGE, 0, start + i, 0, 0, k, v, None, len(k), len(v), [])
            for i, (k, v) in enumerate(workload.records[start : start + args.batch])
        ]

    tmp = Path(tempfile.mkdtemp(prefix="billstream-stages-"))
    pg = EmbeddedPostgres(tmp / "pg")
    pg.start()
    try:
        url, _ = await prepare_database(pg, "stages")
        engine = create_engine(url, pool_size=2)
        fake = _FakeRuntime()
        handlers.register(fake)  # type: ignore[arg-type]
        decode, handler, group, commands = fake.found[topics.USAGE]
        processor = runtime_consumer.BatchProcessor(
            runtime_consumer.Consumer(topics.USAGE, group, decode, handler, commands),
            session_factory(engine),
            retry_initial_s=0.2,
            retry_max_s=1.0,
        )
        starts = range(0, n, args.batch)
        profiler = cProfile.Profile() if args.cprofile else None
        w0, c0 = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        if not args.no_gc_freeze:
            gc.collect()
            gc.freeze()  # as the worker process does once started (workers/runtime/app.py)
        gc.callbacks.append(_gc_timer)
        for start in starts:
            await processor.process(batch_of(start))
        gc.callbacks.remove(_gc_timer)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        await engine.dispose()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"{n:,} records in {len(starts)} batches of ≤{args.batch}: "
        f"{n / wall:,.0f} events/s wall, {n / cpu:,.0f} events per CPU-second "
        f"({wall:.2f} s wall, {cpu:.2f} s CPU)"
    )
    print(f"{'stage':<40} {'wall µs/ev':>10} {'CPU µs/ev':>10} {'% of wall':>9}")
    for label in sorted(WALL):
        print(
            f"{label:<40} {WALL[label] / n * 1e6:>10.1f} {CPU[label] / n * 1e6:>10.1f} "
            f"{100 * WALL[label] / wall:>8.1f}%"
        )
    if args.cprofile:
        print(f"cProfile written to {args.cprofile}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--subjects", type=int, default=1_000)
    p.add_argument("--dup-rate", type=float, default=0.02)
    p.add_argument("--batch", type=int, default=Settings().batch_max_records)
    p.add_argument("--cprofile", metavar="FILE")
    p.add_argument(
        "--no-gc-freeze", action="store_true", help="leave the startup heap in the GC's scans"
    )
    p.add_argument("--cpu-only", action="store_true", help="the pure-CPU stages, no database")
    p.add_argument("--rounds", type=int, default=5, help="--cpu-only: best of this many")
    parsed = p.parse_args()
    asyncio.run(cpu_only(parsed) if parsed.cpu_only else main(parsed))

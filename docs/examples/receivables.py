"""A downstream consumer of billstream: a receivables projection (expected vs actual cash in).

It reads ``invoice.created`` and ``invoice.paid`` from ``billstream.events.invoicing.v1``
and needs nothing from billstream but the JSON Schemas ``billstream schemas export``
writes: no billstream import, just aiokafka, jsonschema and the standard library.

    billstream schemas export --out contracts
    python docs/examples/receivables.py --schemas contracts --bootstrap localhost:9094 \\
        --db receivables.sqlite3
    sqlite3 receivables.sqlite3 'SELECT * FROM receivables'

How it stays correct (the same rules billstream's own consumers follow):

- each event is validated against the exported schema of its ``type`` and ``dataversion``;
  one that does not validate is reported and skipped (a real system would dead-letter it);
- effects and the "already applied" marker (``tenantid/source/id``) commit in one SQLite
  transaction, so a redelivered event changes nothing;
- Kafka offsets are committed only after that transaction commits (at-least-once in,
  effectively-once out);
- amounts are integer minor units of the invoice's currency, as in the schemas: never floats.

See docs/downstream-example.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

TOPIC = "billstream.events.invoicing.v1"
TYPES = ("invoice.created", "invoice.paid")

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (event_key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS invoices (
    tenant TEXT NOT NULL,
    invoice_id TEXT NOT NULL,
    customer TEXT NOT NULL,
    currency TEXT NOT NULL,
    expected INTEGER NOT NULL,        -- minor units: what the invoice asks for
    received INTEGER NOT NULL DEFAULT 0,
    due_at TEXT,
    paid_at TEXT,
    PRIMARY KEY (tenant, invoice_id)
);
CREATE VIEW IF NOT EXISTS receivables AS
    SELECT tenant, customer, currency,
           SUM(expected) AS expected,
           SUM(received) AS received,
           SUM(expected - received) AS outstanding,
           SUM(CASE WHEN received < expected AND due_at < strftime('%Y-%m-%dT%H:%M:%S', 'now')
                    THEN expected - received ELSE 0 END) AS overdue
    FROM invoices GROUP BY tenant, customer, currency;
"""


class Contracts:
    """The exported JSON Schemas, by (type, dataversion)."""

    def __init__(self, directory: Path) -> None:
        from jsonschema import Draft202012Validator

        self.validators: dict[tuple[str, str], Any] = {}
        for ce_type in TYPES:
            for path in sorted((directory / TOPIC).glob(f"{ce_type}.v*.schema.json")):
                schema = json.loads(path.read_text())
                version = schema["x-billstream"]["dataversion"]
                self.validators[(ce_type, version)] = Draft202012Validator(
                    schema, format_checker=Draft202012Validator.FORMAT_CHECKER
                )
        missing = [t for t in TYPES if not any(k[0] == t for k in self.validators)]
        if missing:
            raise SystemExit(f"no exported schema for {missing} under {directory / TOPIC}")

    def errors(self, event: dict[str, Any]) -> list[str]:
        """Why ``event`` does not match its contract ([] when it does)."""
        key = (event.get("type"), event.get("dataversion", "1"))
        validator = self.validators.get(key)  # type: ignore[arg-type]
        if validator is None:
            return [f"no schema for type {key[0]!r} dataversion {key[1]!r}"]
        return [
            f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(event)
        ]


class Projection:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one validated event; False when it was applied before (a redelivery)."""
        key = f"{event['tenantid']}/{event['source']}/{event['id']}"
        data = event["data"]
        with self.db:  # one transaction: the marker and the effect
            cur = self.db.execute("INSERT OR IGNORE INTO applied VALUES (?)", (key,))
            if cur.rowcount == 0:
                return False
            if event["type"] == "invoice.created":
                self.db.execute(
                    "INSERT INTO invoices (tenant, invoice_id, customer, currency, expected,"
                    " received, due_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, invoice_id) DO UPDATE SET expected = excluded.expected,"
                    " due_at = excluded.due_at",
                    (
                        event["tenantid"],
                        data["invoice_id"],
                        data["customer"],
                        data["currency"],
                        data["total"],
                        data["amount_paid"],
                        data["due_at"],
                    ),
                )
            elif event["type"] == "invoice.paid":
                # the event carries the invoice as it is now: upsert, in case it arrives first
                self.db.execute(
                    "INSERT INTO invoices (tenant, invoice_id, customer, currency, expected,"
                    " received, due_at, paid_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, invoice_id) DO UPDATE SET"
                    " received = excluded.received, paid_at = excluded.paid_at",
                    (
                        event["tenantid"],
                        data["invoice_id"],
                        data["customer"],
                        data["currency"],
                        data["total"],
                        data["amount_paid"],
                        data["due_at"],
                        event["time"],
                    ),
                )
        return True

    def receivables(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM receivables ORDER BY tenant, customer, currency")
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


def handle(contracts: Contracts, projection: Projection, value: bytes) -> str:
    """One record: 'applied', 'duplicate', 'ignored' (another type) or 'invalid: …'."""
    try:
        event = json.loads(value)
    except ValueError as e:
        return f"invalid: not JSON ({e})"
    if not isinstance(event, dict) or event.get("type") not in TYPES:
        return "ignored"
    problems = contracts.errors(event)
    if problems:
        return "invalid: " + "; ".join(problems[:3])
    return "applied" if projection.apply(event) else "duplicate"


async def run(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer

    contracts = Contracts(Path(args.schemas))
    projection = Projection(sqlite3.connect(args.db))
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batch.values():
                for record in records:
                    outcome = handle(contracts, projection, record.value)
                    if outcome.startswith("invalid"):
                        print(
                            f"skipped {record.topic}/{record.partition}/{record.offset}: {outcome}"
                        )
            if batch:
                await consumer.commit()  # only after the SQLite transactions committed
                for row in projection.receivables():
                    print(row)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", required=True, help="the `billstream schemas export` dir")
    parser.add_argument("--bootstrap", default="localhost:9094")
    parser.add_argument("--group", default="example.receivables")
    parser.add_argument("--db", default="receivables.sqlite3")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

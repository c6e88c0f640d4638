"""The baseline for bench/metering.py: a hand-written exactly-once metering consumer.

The least a correct consumer must do for one ``sum`` meter with one group_by, written
directly against aiokafka and asyncpg: JSON-decode each record (numbers as Decimal),
one transaction per batch (inbox dedupe with ``INSERT … SELECT unnest … ON CONFLICT DO
NOTHING RETURNING``, aggregate per (subject, groups, hour) in Python, one ``unnest``
upsert into usage_hourly), commit, then commit the offsets.

Deliberately imports nothing from billstream (nor SQLAlchemy, pydantic, FastStream), as
a hand-written consumer would not. Run by bench/metering.py as its own process:

    python bench/_baseline.py BOOTSTRAP DATABASE_URL METER_ID MAX_RECORDS
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

USAGE_TOPIC = "billstream.usage.v1"  # schemas/topics.py USAGE
TENANT = "bench"
BASELINE_GROUP = "bench.baseline"
BASELINE_CONSUMER = "bench.baseline"  # the inbox "consumer" column


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


_CLAIM = """
    INSERT INTO inbox (consumer, message_key)
    SELECT $1, k FROM unnest($2::bytea[]) AS k
    ON CONFLICT DO NOTHING
    RETURNING message_key
"""

_UPSERT = """
    INSERT INTO usage_hourly AS u
        (tenant_id, meter_id, subject, groups, bucket, count, sum, min, max,
         latest_time, latest_value)
    SELECT $1, $2, s, g::jsonb, b, c, su, mi, ma, lt, lv
    FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::numeric[],
                $8::numeric[], $9::numeric[], $10::timestamptz[], $11::numeric[])
         AS d(s, g, b, c, su, mi, ma, lt, lv)
    ON CONFLICT (tenant_id, meter_id, subject, groups, bucket) DO UPDATE SET
        count = u.count + EXCLUDED.count,
        sum = COALESCE(u.sum, 0) + EXCLUDED.sum,
        min = LEAST(u.min, EXCLUDED.min),
        max = GREATEST(u.max, EXCLUDED.max),
        latest_value = CASE
            WHEN u.latest_time IS NULL
              OR (EXCLUDED.latest_time, EXCLUDED.latest_value) > (u.latest_time, u.latest_value)
            THEN EXCLUDED.latest_value ELSE u.latest_value END,
        latest_time = GREATEST(u.latest_time, EXCLUDED.latest_time)
"""


def inbox_key(event: dict[str, Any]) -> bytes:
    """The same identity as billstream's inbox: BLAKE2b-128 of tenant, source and id."""
    text = f"{event['tenantid']}\x1f{event['source']}\x1f{event['id']}"
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def aggregate(
    events: list[dict[str, Any]], keys: list[bytes], fresh: set[bytes]
) -> dict[tuple[str, str, datetime], list[Any]]:
    """(subject, groups, hour) -> [count, sum, min, max, latest_time, latest_value]."""
    buckets: dict[tuple[str, str, datetime], list[Any]] = {}
    for e, k in zip(events, keys, strict=True):
        if k not in fresh:
            continue
        fresh.discard(k)  # a second copy in the same batch is a duplicate
        data = e["data"]
        value = Decimal(data["tokens"])
        at = datetime.fromisoformat(e["time"]).astimezone(UTC)
        bucket = at.replace(minute=0, second=0, microsecond=0)
        groups = json.dumps({"model": data.get("model")}, separators=(",", ":"))
        key = (e["subject"], groups, bucket)
        agg = buckets.get(key)
        if agg is None:
            buckets[key] = [1, value, value, value, at, value]
        else:
            agg[0] += 1
            agg[1] += value
            agg[2] = min(agg[2], value)
            agg[3] = max(agg[3], value)
            if at > agg[4] or (at == agg[4] and value > agg[5]):
                agg[4], agg[5] = at, value
    return buckets


async def baseline_consumer(bootstrap: str, url: str, meter_id: str, max_records: int) -> None:
    """The least a correct exactly-once consumer must do, written by hand for this one meter.

    Runs until SIGTERM; then finishes the batch in hand, commits and leaves the group.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    conn = await asyncpg.connect(_dsn(url))
    consumer = AIOKafkaConsumer(
        USAGE_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=BASELINE_GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=100, max_records=max_records)
            records = [r for batch in fetched.values() for r in batch]
            if not records:
                continue
            events = [json.loads(r.value, parse_float=Decimal) for r in records]
            keys = [inbox_key(e) for e in events]
            async with conn.transaction():
                fresh = {row[0] for row in await conn.fetch(_CLAIM, BASELINE_CONSUMER, keys)}
                buckets = aggregate(events, keys, fresh)
                if buckets:
                    cols = list(zip(*((*k, *v) for k, v in buckets.items()), strict=True))
                    await conn.execute(_UPSERT, TENANT, meter_id, *cols)
            await consumer.commit()  # only after the database commit
    finally:
        await consumer.stop()
        await conn.close()


if __name__ == "__main__":
    bootstrap, url, meter_id, batch = sys.argv[1:5]
    asyncio.run(baseline_consumer(bootstrap, url, meter_id, int(batch)))

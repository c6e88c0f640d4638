"""usage.totals_changed from the metering worker, against the real broker and PostgreSQL:
one event per (subject, meter, hour) a batch changed, carrying the read model's new value."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.envelope import WIRE
from schemas.metering import MeteringEvent, UsageTotalsChanged
from schemas.usage import UsageEvent
from tests.conftest import TenantKey
from tests.integration.support import (
    T0,
    Sessions,
    headers,
    insert_meters,
    producer,
    query,
    read_topic,
    running,
    topic_size,
    usage,
    wait_committed_to_end,
    wait_outbox_drained,
)
from workers.metering import MeterDef, service
from workers.metering.app import build
from workers.settings import Settings

D = Decimal
M = timedelta(minutes=1)
H10, H11 = T0, T0 + timedelta(hours=1)
METERS = [
    {
        "key": "spend",
        "event_type": "api.call",
        "aggregation": "sum",
        "value_property": "$.amount",
        "group_by": {"region": "$.region"},
    },
    {
        "key": "users",
        "event_type": "api.call",
        "aggregation": "unique_count",
        "value_property": "$.user",
        "group_by": {"region": "$.region"},
    },
]

_metering: TypeAdapter[MeteringEvent] = TypeAdapter(MeteringEvent)


def call(
    id: str, subject: str, at: datetime, amount: str | None, user: str, region: str
) -> UsageEvent:
    data: dict[str, object] = {"user": user, "region": region}
    if amount is not None:
        data["amount"] = D(amount)
    return usage("acme", id, subject=subject, time=at, data=data)


async def send_batched(p: AIOKafkaProducer, events: Sequence[UsageEvent]) -> None:
    """Send ``events`` as ONE record batch per partition (key tenant:subject, as producers
    do), so the worker reads each subject's events of a step in one consumer batch."""
    partitions = sorted(await p.partitions_for(topics.USAGE))
    batches: dict[int, BatchBuilder] = {}
    for e in events:
        key = f"{e.tenantid}:{e.subject}".encode()
        partition = DefaultPartitioner()(key, partitions, partitions)
        if partition not in batches:
            batches[partition] = p.create_batch()
        assert batches[partition].append(key=key, value=e.to_json(), timestamp=None) is not None
    for partition, batch in batches.items():
        await (await p.send_batch(batch, topics.USAGE, partition=partition))


async def published(settings: Settings, sessions: Sessions, count: int) -> list[UsageTotalsChanged]:
    """Once the worker has committed every usage record and the relay has published every
    outbox row: the events topic, which must hold exactly ``count`` records."""
    await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
    await wait_outbox_drained(sessions)
    records = await read_topic(settings, topics.EVENTS_METERING, count)
    out = []
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = _metering.validate_json(r.value, context=WIRE)
        assert isinstance(event, UsageTotalsChanged)
        assert r.key == b"acme"  # the topic's key contract: tenant_id
        assert headers(r)["ce_type"] == "usage.totals_changed"
        out.append(event)
    return out


Key = tuple[str, str, datetime]  # subject, meter key, hour


def by_key(events: Sequence[UsageTotalsChanged]) -> dict[Key, UsageTotalsChanged]:
    out: dict[Key, UsageTotalsChanged] = {}
    for e in events:
        key = (e.subject, e.data.meter, e.data.period_start)
        assert key not in out, f"two totals_changed for {key} in one batch"
        out[key] = e
    return out


async def read_model(sessions: Sessions, meters: dict[str, MeterDef], key: Key) -> Decimal | None:
    """What GET /v1/meters/{key}/usage?subject=…&window_size=hour answers for that hour."""
    subject, meter_key, hour = key
    rows = await query(
        sessions,
        meters[meter_key],
        subjects=[subject],
        window="hour",
        start=hour,
        end=hour + timedelta(hours=1),
    )
    [row] = rows
    assert (row.window_start, row.subject) == (hour, subject)
    return row.value


# step 1: both subjects, both hours, both regions; a duplicate inside the batch
S1 = [
    call("a1", "cust-a", H10 + 1 * M, "1", "u1", "eu"),
    call("a2", "cust-a", H10 + 2 * M, "2", "u1", "us"),  # same user, other region: still 1
    call("a3", "cust-a", H11 + 3 * M, "4", "u2", "eu"),
    call("b1", "cust-b", H10 + 4 * M, "8", "u3", "us"),
    call("b1", "cust-b", H10 + 4 * M, "8", "u3", "us"),  # duplicate (same source and id)
    call("b2", "cust-b", H11 + 5 * M, "0.25", "u3", "eu"),
]
# step 2: more in hours already counted; a duplicate of step 1 and a rejected event, each
# alone on a key of its own
S2 = [
    call("a4", "cust-a", H10 + 10 * M, "16", "u4", "us"),
    call("a5", "cust-a", H10 + 11 * M, "0.5", "u1", "eu"),
    call("a3", "cust-a", H11 + 3 * M, "4", "u2", "eu"),  # duplicate: cust-a's 11:00 untouched
    call("b3", "cust-b", H11 + 12 * M, "32", "u3", "us"),
    call("b4", "cust-b", H11 + 13 * M, "64", "u5", "eu"),
    call("b5", "cust-b", H10 + 14 * M, None, "u6", "us"),  # rejected: no amount
]
# step 3: only duplicates and a rejected event
S3 = [S1[0], S2[0], S2[3], call("b6", "cust-b", H11 + 15 * M, None, "u7", "eu")]


async def test_one_totals_changed_per_subject_meter_and_hour_a_batch_changed(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    meters = await insert_meters(sessions, "acme", METERS)
    started = datetime.now(UTC)
    async with producer(settings) as p:
        await send_batched(p, S1)  # on the topic before the worker starts
        async with running(build(settings)):
            # --- step 1: 2 subjects x 2 hours x 2 meters ------------------------------
            first = by_key(await published(settings, sessions, 8))
            hours = [("cust-a", H10), ("cust-a", H11), ("cust-b", H10), ("cust-b", H11)]
            assert sorted(first) == sorted((s, m, h) for s, h in hours for m in ("spend", "users"))
            expected = {
                ("cust-a", "spend", H10): (D("3"), 2),
                ("cust-a", "users", H10): (D(1), 2),  # u1 in two regions: one user
                ("cust-a", "spend", H11): (D("4"), 1),
                ("cust-a", "users", H11): (D(1), 1),
                ("cust-b", "spend", H10): (D("8"), 1),  # its duplicate counted nowhere
                ("cust-b", "users", H10): (D(1), 1),
                ("cust-b", "spend", H11): (D("0.25"), 1),
                ("cust-b", "users", H11): (D(1), 1),
            }
            assert {k: (e.data.total, e.data.events) for k, e in first.items()} == expected
            for key, e in first.items():
                assert e.data.total == await read_model(sessions, meters, key), key

            # --- step 2: later batches report the hour's new value, all groups combined -
            await send_batched(p, S2)
            everything = await published(settings, sessions, 8 + 4)
            second = by_key(everything[8:])
            expected = {
                ("cust-a", "spend", H10): (D("19.5"), 2),  # 1 + 2 + 16 + 0.5
                ("cust-a", "users", H10): (D(2), 2),  # u1, u4
                ("cust-b", "spend", H11): (D("96.25"), 2),  # 0.25 + 32 + 64
                ("cust-b", "users", H11): (D(2), 2),  # u3, u5
            }
            assert {k: (e.data.total, e.data.events) for k, e in second.items()} == expected
            for key, e in second.items():
                assert e.data.total == await read_model(sessions, meters, key), key
            assert await topic_size(settings, topics.dlq(topics.USAGE)) == 1

            # --- step 3: duplicates and a rejected event change no total -----------------
            await send_batched(p, S3)
            await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
            await read_topic(settings, topics.dlq(topics.USAGE), 2)
            await published(settings, sessions, 12)

    for e in everything:
        assert (e.source, e.tenantid, e.subject) == (service.SOURCE, "acme", e.data.subject)
        assert e.data.meter_id == meters[e.data.meter].id
        assert e.data.aggregation == meters[e.data.meter].aggregation
        assert e.data.period_end == e.data.period_start + timedelta(hours=1)
        assert started <= e.time <= datetime.now(UTC)

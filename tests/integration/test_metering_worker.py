"""The metering worker against the real broker and PostgreSQL: meter commands, exact
aggregation under duplicates, dead letters, offsets, graceful restart, tenant isolation."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal

from schemas import groups, topics
from schemas.metering import MeterCreated
from schemas.usage import UsageEvent
from tests.conftest import KafkaServer, TenantKey, make_tenant
from tests.integration.support import (
    T0,
    Sessions,
    bulk_record,
    command_outcome,
    committed_offsets,
    create_meter_command,
    create_meters,
    headers,
    inbox_count,
    inbox_gate,
    insert_meters,
    meter,
    producer,
    query,
    quick_rejoin,
    read_topic,
    running,
    send_command,
    send_raw,
    send_records,
    send_usage,
    topic_size,
    total,
    usage,
    wait_committed_to_end,
    wait_inbox,
    wait_outbox_drained,
    waiting_on_lock,
)
from workers.devstack import wait_for
from workers.metering import MeterDef
from workers.metering.app import build
from workers.settings import Settings

TOKENS = {
    "key": "tokens",
    "event_type": "llm.completion",
    "aggregation": "sum",
    "value_property": "$.tokens",
}


async def test_create_meter_succeeds_publishes_meter_created_and_refuses_a_conflicting_redefinition(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    async with running(build(settings)), producer(settings) as p:
        first = create_meter_command(t, **TOKENS, group_by={"model": "$.model"})
        await send_command(p, first)
        record = await command_outcome(sessions, t, first.id)
        assert record.status == "succeeded", record.error
        meter_id = record.result["meter_id"]
        created = await meter(sessions, t, "tokens")
        assert created is not None and created.id == meter_id
        assert (created.aggregation, created.value_property) == ("sum", "$.tokens")

        # meter.created reaches the events topic through the outbox relay
        [published] = await read_topic(settings, topics.EVENTS_METERING, 1)
        event = MeterCreated.model_validate_json(published.value)
        assert event.data.meter_id == meter_id
        assert event.data.key == "tokens" and event.data.group_by == {"model": "$.model"}
        assert event.tenantid == t and event.causationid == first.id
        assert published.key == t.encode()

        # the identical definition again, under a new command id: succeeds, same meter
        again = create_meter_command(t, **TOKENS, group_by={"model": "$.model"})
        assert again.id != first.id
        await send_command(p, again)
        record = await command_outcome(sessions, t, again.id)
        assert record.status == "succeeded", record.error
        assert record.result == {"meter_id": meter_id}

        # same key, different aggregation: fails with meter_conflict, nothing changes
        conflicting = create_meter_command(
            t,
            key="tokens",
            event_type="llm.completion",
            aggregation="max",
            value_property="$.tokens",
        )
        await send_command(p, conflicting)
        record = await command_outcome(sessions, t, conflicting.id)
        assert record.status == "failed"
        assert record.error is not None and record.error["code"] == "meter_conflict"
        assert record.error["field"] == "key"
        assert record.result is None
        unchanged = await meter(sessions, t, "tokens")
        assert unchanged == created

        # the very same command redelivered (same id) is applied once
        await send_command(p, first)
        await wait_committed_to_end(settings, groups.METERING_COMMANDS, topics.COMMANDS_METERING)
        record = await command_outcome(sessions, t, first.id)
        assert (record.status, record.result) == ("succeeded", {"meter_id": meter_id})

        # neither the repeats nor the conflict published a second meter.created,
        # and no command was dead-lettered
        await wait_outbox_drained(sessions)
        assert await topic_size(settings, topics.EVENTS_METERING) == 1
        assert await topic_size(settings, topics.dlq(topics.COMMANDS_METERING)) == 0


# --- exactly-once aggregation --------------------------------------------------------

D = Decimal
H10 = T0  # 2025-03-01 10:00 UTC
H11 = T0 + timedelta(hours=1)
DAY2 = T0 + timedelta(days=1)  # 2025-03-02 10:00 UTC

API_METERS = [
    {
        "key": "calls",
        "event_type": "api.call",
        "aggregation": "count",
        "group_by": {"region": "$.region"},
    },
    {
        "key": "spend",
        "event_type": "api.call",
        "aggregation": "sum",
        "value_property": "$.amount",
        "group_by": {"region": "$.region"},
    },
    {"key": "low", "event_type": "api.call", "aggregation": "min", "value_property": "$.amount"},
    {"key": "high", "event_type": "api.call", "aggregation": "max", "value_property": "$.amount"},
    {
        "key": "users",
        "event_type": "api.call",
        "aggregation": "unique_count",
        "value_property": "$.user",
    },
    {
        "key": "level",
        "event_type": "api.call",
        "aggregation": "latest",
        "value_property": "$.amount",
    },
]


def call(
    id: str,
    subject: str,
    at: timedelta,
    amount: str,
    user: str,
    region: str | None,
    *,
    tenant: str = "acme",
    source: str = "tests",
) -> UsageEvent:
    data: dict[str, object] = {"amount": D(amount), "user": user}
    if region is not None:
        data["region"] = region
    return usage(tenant, id, subject=subject, time=T0 + at, data=data, source=source)


M = timedelta(minutes=1)
E1 = call("e1", "cust-1", 10 * M, "0.1", "u1", "eu")
E2 = call("e2", "cust-1", 20 * M, "0.2", "u2", "eu")
E3 = call("e3", "cust-1", 90 * M, "5", "u1", "us")
E4 = call("e4", "cust-2", 40 * M, "2.5", "u3", "us")
E5 = call("e5", "cust-1", 65 * M, "1.25", "u2", "eu")
E6 = call("e6", "cust-2", 110 * M, "0.75", "u4", "eu")
E7 = call("e7", "cust-1", timedelta(days=1, hours=1), "7", "u5", "us")
E8 = call("e8", "cust-2", timedelta(days=1, hours=2), "0.05", "u3", None)
# the id of e1 from another source: a different event, counted
E9 = call("e1", "cust-2", 15 * M, "0.3", "u1", "eu", source="tests/other")
# a redelivery of e1 whose payload differs: identity is (source, id), so it is dropped
E1_AGAIN_CHANGED = call("e1", "cust-1", 10 * M, "100", "u9", "eu")


async def test_every_aggregation_is_exact_and_duplicates_count_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    meters = await insert_meters(sessions, "acme", API_METERS)
    async with producer(settings) as p:
        # batch 1 is on the topic before the worker starts, so its duplicates arrive in one
        # batch (same key, so same partition, adjacent)
        await send_usage(p, [E1, E1, E1_AGAIN_CHANGED, E2, E4, E4, E9])
        async with running(build(settings)):
            await wait_inbox(sessions, groups.METERING_USAGE, 4)
            assert await total(sessions, meters["calls"]) == 4
            assert await total(sessions, meters["spend"]) == D("3.1")

            # batch 2: every earlier event again (across batches), the rest, a duplicate
            await send_usage(p, [E1, E2, E4, E9, E3, E5, E6, E7, E8, E8, E1_AGAIN_CHANGED])
            await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
    assert await inbox_count(sessions, groups.METERING_USAGE) == 9
    assert await topic_size(settings, topics.dlq(topics.USAGE)) == 0

    calls, spend, low, high, users, level = (
        meters[k] for k in ("calls", "spend", "low", "high", "users", "level")
    )
    # over everything
    assert await total(sessions, calls) == 9
    assert await total(sessions, spend) == D("17.15")
    assert await total(sessions, low) == D("0.05")
    assert await total(sessions, high) == D("7")
    assert await total(sessions, users) == 5
    assert await total(sessions, level) == D("0.05")  # e8 is the last by event time

    # 0.1 + 0.2 is exactly 0.3: cust-1's first hour holds e1 and e2 only
    rows = await query(sessions, spend, subjects=["cust-1"], window="hour")
    assert [(r.window_start, r.window_end, r.subject, r.value) for r in rows] == [
        (H10, H11, "cust-1", D("0.3")),
        (H11, H11 + timedelta(hours=1), "cust-1", D("6.25")),
        (DAY2 + timedelta(hours=1), DAY2 + timedelta(hours=2), "cust-1", D("7")),
    ]
    assert str(rows[0].value) in ("0.3", "0.30", "0.300")  # never 0.30000000000000004

    # hour windows over every subject, for each aggregation
    async def hourly(m: MeterDef) -> list[tuple[datetime | None, D | None]]:
        return [(r.window_start, r.value) for r in await query(sessions, m, window="hour")]

    d2h11, d2h12 = DAY2 + timedelta(hours=1), DAY2 + timedelta(hours=2)
    assert await hourly(calls) == [(H10, 4), (H11, 3), (d2h11, 1), (d2h12, 1)]
    assert await hourly(spend) == [(H10, D("3.1")), (H11, D("7.0")), (d2h11, 7), (d2h12, D("0.05"))]
    assert await hourly(low) == [(H10, D("0.1")), (H11, D("0.75")), (d2h11, 7), (d2h12, D("0.05"))]
    assert await hourly(high) == [(H10, D("2.5")), (H11, 5), (d2h11, 7), (d2h12, D("0.05"))]
    assert await hourly(users) == [(H10, 3), (H11, 3), (d2h11, 1), (d2h12, 1)]
    # latest per hour: e4 (10:40) and e6 (11:50)
    assert await hourly(level) == [
        (H10, D("2.5")),
        (H11, D("0.75")),
        (d2h11, 7),
        (d2h12, D("0.05")),
    ]

    # day windows
    async def daily(m: MeterDef) -> list[tuple[datetime | None, datetime | None, D | None]]:
        return [
            (r.window_start, r.window_end, r.value) for r in await query(sessions, m, window="day")
        ]

    day1 = T0.replace(hour=0)
    day2, day3 = day1 + timedelta(days=1), day1 + timedelta(days=2)
    assert await daily(calls) == [(day1, day2, 7), (day2, day3, 2)]
    assert await daily(spend) == [(day1, day2, D("10.1")), (day2, day3, D("7.05"))]
    assert await daily(users) == [(day1, day2, 4), (day2, day3, 2)]  # u3 on both days
    assert await daily(level) == [(day1, day2, D("0.75")), (day2, day3, D("0.05"))]

    # a range: [11:00, next day 11:00) holds e3, e5, e6 only
    assert await total(sessions, spend, start=H11, end=DAY2 + timedelta(hours=1)) == D("7.0")

    # subject filter
    cust2 = {"subjects": ["cust-2"]}
    assert await total(sessions, calls, **cust2) == 4
    assert await total(sessions, spend, **cust2) == D("3.6")
    assert await total(sessions, low, **cust2) == D("0.05")
    assert await total(sessions, high, **cust2) == D("2.5")
    assert await total(sessions, users, **cust2) == 3
    assert await total(sessions, level, **cust2) == D("0.05")
    assert await total(sessions, level, subjects=["cust-1"]) == D("7")
    assert await total(sessions, calls, subjects=["nobody"]) is None

    # group by a meter group, and by subject
    rows = await query(sessions, spend, group_by=["region"])
    assert [(r.groups, r.value) for r in rows] == [
        ({"region": "eu"}, D("2.6")),
        ({"region": "us"}, D("14.5")),
        ({"region": None}, D("0.05")),  # e8 has no region
    ]
    rows = await query(sessions, calls, group_by=["subject", "region"], window="day")
    assert [(r.window_start, r.subject, r.groups["region"], r.value) for r in rows] == [
        (day1, "cust-1", "eu", 3),
        (day1, "cust-1", "us", 1),
        (day1, "cust-2", "eu", 2),
        (day1, "cust-2", "us", 1),
        (day2, "cust-1", "us", 1),
        (day2, "cust-2", None, 1),
    ]


# --- poison messages -------------------------------------------------------------------


async def test_poison_usage_records_are_dead_lettered_with_their_reason_and_the_stream_goes_on(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    meters = await insert_meters(sessions, "acme", API_METERS[:2])  # calls (count), spend (sum)
    key = b"acme:cust-1"  # one partition, so "around" means before and after in the log
    valid = [call(f"ok-{i}", "cust-1", i * M, f"{i}.5", "u1", "eu") for i in range(5)]
    poison: dict[str, tuple[bytes, str, str]] = {  # name -> (value, error, reason contains)
        "undecodable": (b"{not json", "undecodable", "JSONDecodeError"),
        "no envelope": (b'{"hello": "world"}', "undecodable", "tenantid: Field required"),
        # without an id it cannot be deduplicated: refused, never given an invented id
        "no id": (
            usage("acme", "x", type="api.call", data={"amount": 1})
            .to_json()
            .replace(b'"id":"x",', b""),
            "undecodable",
            "id: Field required",
        ),
        "no meter": (
            usage("acme", "p-type", type="unmetered.thing").to_json(),
            "unusable_event",
            "no meter reads event type 'unmetered.thing'",
        ),
        "no value": (
            usage("acme", "p-value", type="api.call", data={"region": "eu"}).to_json(),
            "unusable_event",
            "meter 'spend' needs $.amount, which the event lacks",
        ),
        "bad value": (
            usage("acme", "p-nan", type="api.call", data={"amount": "lots"}).to_json(),
            "unusable_event",
            "data.amount is 'lots', not a number",
        ),
        "unknown tenant": (
            usage("ghost", "p-tenant", type="api.call", data={"amount": 1}).to_json(),
            "unknown_tenant",
            "unknown tenant 'ghost'",
        ),
    }
    offsets: dict[str, int] = {}
    partitions: set[int] = set()
    async with producer(settings) as p:
        # valid, poison, valid, poison, ... all in one partition
        for i, (name, (value, _, _)) in enumerate(poison.items()):
            await send_raw(p, topics.USAGE, valid[i % len(valid)].to_json(), key)
            sent = await send_raw(p, topics.USAGE, value, key, [("traceparent", name.encode())])
            offsets[name] = sent.offset
            partitions.add(sent.partition)
        await send_usage(p, valid)  # again: duplicates of the ones sent, and the last one
        async with running(build(settings)):
            dead = await read_topic(settings, topics.dlq(topics.USAGE), len(poison))
            await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)

    # every valid event counted exactly once; no poison counted
    assert await total(sessions, meters["calls"]) == 5
    assert await total(sessions, meters["spend"]) == D("12.5")  # 0.5 + 1.5 + ... + 4.5
    assert await inbox_count(sessions, groups.METERING_USAGE) == 5  # rejected claims were released

    [partition] = partitions
    by_offset = {int(headers(r)["billstream-dlq-offset"]): r for r in dead}
    assert sorted(by_offset) == sorted(offsets.values())
    for name, (value, error, reason) in poison.items():
        record = by_offset[offsets[name]]
        h = headers(record)
        assert record.value == value, name  # the original bytes, untouched
        assert record.key == key, name
        assert h["traceparent"] == name  # its own headers are kept
        assert h["billstream-dlq-error"] == error, name
        assert reason in h["billstream-dlq-reason"], (name, h["billstream-dlq-reason"])
        assert h["billstream-dlq-topic"] == topics.USAGE
        assert h["billstream-dlq-partition"] == str(partition)
        assert h["billstream-dlq-group"] == groups.METERING_USAGE
        assert datetime.fromisoformat(h["billstream-dlq-at"]).tzinfo is not None


# --- offsets, graceful stop, restart ---------------------------------------------------

COUNT_AND_SUM = [
    {"key": "calls", "event_type": "api.call", "aggregation": "count"},
    {"key": "spend", "event_type": "api.call", "aggregation": "sum", "value_property": "$.amount"},
]


async def test_offsets_are_committed_to_the_end_once_processed(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    meters = await insert_meters(sessions, "acme", COUNT_AND_SUM)
    events = [call(f"e{i}", f"cust-{i % 7}", i * M, str(i), "u", None) for i in range(60)]
    async with running(build(settings)), producer(settings) as p:
        await send_usage(p, events[:30])
        await wait_inbox(sessions, groups.METERING_USAGE, 30)
        ends = await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
        assert sum(ends.values()) == 30
        await send_usage(p, events[30:])
        await wait_inbox(sessions, groups.METERING_USAGE, 60)
        ends = await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
        assert sum(ends.values()) == 60
        assert len([e for e in ends.values() if e]) > 1  # spread over partitions
    assert await total(sessions, meters["calls"]) == 60
    assert await total(sessions, meters["spend"]) == sum(range(60))


async def test_a_graceful_stop_mid_stream_commits_what_it_applied_and_a_restart_finishes_exactly(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer
) -> None:
    meters = await insert_meters(sessions, "acme", COUNT_AND_SUM)
    n = 8_000
    records = [bulk_record("acme", f"e{i}", f"cust-{i % 50}", T0 + i * M, i) for i in range(n)]
    records += records[::10]  # 800 duplicates
    small_batches = quick_rejoin(settings, kafka).model_copy(update={"batch_max_records": 250})
    async with producer(settings) as p:
        await send_records(p, topics.USAGE, records)

    # park the worker mid-stream: the batch holding e4000 waits on its inbox row, then the
    # stop is requested while that batch is in flight, then the row is let go
    worker = build(small_batches)
    async with inbox_gate(sessions, groups.METERING_USAGE, "acme", "bulk", "e4000"):
        await worker.start()
        try:
            await wait_for(lambda: waiting_on_lock(sessions), timeout_s=15)
        except BaseException:
            await worker.stop()
            raise
        stopping = asyncio.ensure_future(worker.stop())
        await wait_for(lambda: all(p.stopping.is_set() for p in worker.runtime.processors))
    await stopping
    applied = await inbox_count(sessions, groups.METERING_USAGE)
    committed = await committed_offsets(settings, groups.METERING_USAGE, topics.USAGE)
    assert 0 < applied < n, "stopped mid-stream"
    # graceful: every batch applied in the database had its offsets committed, so nothing
    # needs to be redelivered (the preload's duplicates are its only excess over the inbox)
    consumed = sum(c or 0 for c in committed.values())
    assert applied <= consumed <= applied + len(records) - n
    assert await total(sessions, meters["calls"]) == applied

    async with running(build(small_batches)):
        await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE, timeout_s=60)
    assert await inbox_count(sessions, groups.METERING_USAGE) == n
    assert await total(sessions, meters["calls"]) == n
    assert await total(sessions, meters["spend"]) == n * (n - 1) // 2
    assert await topic_size(settings, topics.dlq(topics.USAGE)) == 0


# --- tenants ---------------------------------------------------------------------------


async def test_tenants_never_see_each_others_usage(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    other = (await make_tenant(sessions, "globex")).tenant_id
    async with running(build(settings)), producer(settings) as p:
        acme = await create_meters(p, sessions, "acme", COUNT_AND_SUM)
        globex = await create_meters(p, sessions, other, COUNT_AND_SUM)
        assert acme["calls"].id != globex["calls"].id
        # the same ids, source, type and subjects in both tenants: distinct events
        await send_usage(p, [call(f"e{i}", "cust-1", i * M, "1", "u", None) for i in range(3)])
        await send_usage(
            p,
            [call(f"e{i}", "cust-1", i * M, "10", "u", None, tenant=other) for i in range(5)],
        )
        await wait_inbox(sessions, groups.METERING_USAGE, 8)
    assert await total(sessions, acme["calls"]) == 3
    assert await total(sessions, acme["spend"]) == 3
    assert await total(sessions, globex["calls"]) == 5
    assert await total(sessions, globex["spend"]) == 50
    assert await meter(sessions, "acme", "calls") == acme["calls"]
    assert await meter(sessions, other, "calls") == globex["calls"]
    # another tenant's meter id under my tenant id reads nothing
    forged = dataclasses.replace(globex["spend"], tenant_id="acme")
    assert await query(sessions, forged) == []
    assert await query(sessions, dataclasses.replace(acme["spend"], tenant_id=other)) == []

"""``billstream replay`` against the real broker, PostgreSQL and the metering worker: by
offset and by time, into a consumer group and into a topic. Replaying what was applied
changes no total; every replay is audited before it runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from schemas import groups, topics
from schemas.ops import OpsReplayed
from schemas.usage import UsageEvent
from storage.metering import MeterDef
from storage.ops import OpsAuditRow
from tests.conftest import KafkaServer, TenantKey, make_tenant
from tests.integration.support import (
    Sessions,
    committed_offsets,
    insert_meters,
    producer,
    quick_rejoin,
    read_all,
    read_topic,
    running,
    total,
    usage,
    wait_committed_to_end,
)
from workers.devstack import wait_for
from workers.metering.app import build
from workers.ops.errors import OpsError, UsageError
from workers.ops.kafka import describe_group
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.settings import Settings

USAGE_GROUP = groups.METERING_USAGE

METERS = [
    {"key": "calls", "event_type": "api.call", "aggregation": "count"},
    {"key": "spend", "event_type": "api.call", "aggregation": "sum", "value_property": "$.amount"},
]
# record timestamps (Kafka's, not the events' time): batch A long before batch B
TA = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TB = TA + timedelta(hours=2)


def calls(tenant: str, prefix: str, n: int, amount: int = 5) -> list[UsageEvent]:
    return [
        usage(tenant, f"{prefix}-{i}", subject=f"cust-{i % 3}", data={"amount": amount})
        for i in range(n)
    ]


async def send_at(p: AIOKafkaProducer, events: Sequence[UsageEvent], at: datetime) -> None:
    """Send with an explicit record timestamp, as multi-record batches (linger)."""
    ms = int(at.timestamp() * 1000)
    futures = [
        await p.send(
            topics.USAGE, e.to_json(), key=f"{e.tenantid}:{e.subject}".encode(), timestamp_ms=ms
        )
        for e in events
    ]
    await asyncio.gather(*futures)


async def totals(sessions: Sessions, meters: dict[str, MeterDef]) -> tuple[int, int]:
    calls, spend = await total(sessions, meters["calls"]), await total(sessions, meters["spend"])
    return int(calls or 0), int(spend or 0)


async def audit_events(settings: Settings, n: int) -> list[OpsReplayed]:
    """The ops.replayed events, oldest first (keyed by tenant, so across partitions)."""
    records = await read_topic(settings, topics.EVENTS_OPS, n)
    events = [OpsReplayed.model_validate_json(r.value) for r in records]
    return sorted(events, key=lambda e: e.time)


def deduplicated() -> float:
    value = REGISTRY.get_sample_value(
        "billstream_messages_deduplicated_total", {"group": USAGE_GROUP, "topic": topics.USAGE}
    )
    return value or 0.0


def request(**kw: object) -> ReplayRequest:
    defaults: dict[str, object] = {
        "topic": topics.USAGE,
        "reason": "INC-42: metering bug fixed",
        "actor": "alice",
    }
    return ReplayRequest(**{**defaults, **kw})  # type: ignore[arg-type]


async def no_members(settings: Settings, group: str) -> None:
    """Wait until the group lists no member that holds partitions (real Kafka drops a
    leaving member at once; the embedded broker keeps listing it without an assignment)."""

    async def idle() -> bool:
        state = await describe_group(settings, group)
        return not state.assigned

    await wait_for(idle, timeout_s=30, interval_s=0.2)


async def test_replay_into_the_group_by_time_then_by_offset_rereads_and_counts_nothing_twice(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer
) -> None:
    settings = quick_rejoin(settings, kafka)
    meters = await insert_meters(sessions, "acme", METERS)
    async with producer(settings) as p:
        await send_at(p, calls("acme", "a", 6), TA)
        await send_at(p, calls("acme", "b", 4), TB)
    async with running(build(settings)):
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
        assert await total(sessions, meters["calls"]) == 10
        assert await total(sessions, meters["spend"]) == 50
        # a live group is never reset under a running worker
        with pytest.raises(OpsError, match="live member"):
            await replay(settings, request(group=USAGE_GROUP, start=parse_bound("0", "--from")))
    ends = await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
    await no_members(settings, USAGE_GROUP)
    committed = await committed_offsets(settings, USAGE_GROUP, topics.USAGE)

    # by time: only batch B (stamped at TB) is read again
    dry = await replay(
        settings,
        request(group=USAGE_GROUP, start=parse_bound(TB.isoformat(), "--from"), dry_run=True),
    )
    assert dry.records == 4 and dry.audit_id is None
    assert await committed_offsets(settings, USAGE_GROUP, topics.USAGE) == committed  # unchanged
    by_time = await replay(
        settings, request(group=USAGE_GROUP, start=parse_bound(TB.isoformat(), "--from"))
    )
    assert by_time.records == 4 and by_time.audit_id is not None
    moved = await committed_offsets(settings, USAGE_GROUP, topics.USAGE)
    assert sum(ends[p] - (c or 0) for p, c in moved.items()) == 4

    before = deduplicated()
    async with running(build(settings)):
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
        await wait_for(lambda: deduplicated() - before == 4, timeout_s=10)
    assert await total(sessions, meters["calls"]) == 10
    assert await total(sessions, meters["spend"]) == 50
    await no_members(settings, USAGE_GROUP)

    # by offset: everything, on every partition
    by_offset = await replay(settings, request(group=USAGE_GROUP, start=parse_bound("0", "--from")))
    assert by_offset.records == 10
    rewound = await committed_offsets(settings, USAGE_GROUP, topics.USAGE)
    assert {c or 0 for c in rewound.values()} == {0}  # None: an empty partition, never committed
    before = deduplicated()
    async with running(build(settings)):
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
        await wait_for(lambda: deduplicated() - before == 10, timeout_s=10)
    assert await total(sessions, meters["calls"]) == 10
    assert await total(sessions, meters["spend"]) == 50

    # both replays were audited: on the ops topic and in PostgreSQL
    audit = await audit_events(settings, 2)
    assert [a.id for a in audit] == [by_time.audit_id, by_offset.audit_id]
    first = audit[0]
    assert (first.data.actor, first.data.reason) == ("alice", "INC-42: metering bug fixed")
    assert (first.data.mode, first.data.group, first.data.messages) == ("group", USAGE_GROUP, 4)
    assert first.data.start == TB.isoformat() and first.tenantid == "*"
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(OpsAuditRow)) == 2


async def test_replay_into_a_topic_by_time_and_by_offset_republishes_and_counts_nothing_twice(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    await make_tenant(sessions, "globex")
    acme = await insert_meters(sessions, "acme", METERS)
    globex = await insert_meters(sessions, "globex", METERS)
    async with producer(settings) as p:
        await send_at(p, calls("acme", "a", 5), TA)
        await send_at(p, [*calls("acme", "b", 3), *calls("globex", "g", 2, amount=7)], TB)
    async with running(build(settings)):
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
        assert await totals(sessions, acme) == (8, 40)
        assert await totals(sessions, globex) == (2, 14)

        # by time, one tenant: acme's batch B only
        selected = request(
            into=topics.USAGE,
            start=parse_bound(TB.isoformat(), "--from"),
            tenant="acme",
            type_glob="api.*",
        )
        dry = await replay(settings, ReplayRequest(**{**selected.__dict__, "dry_run": True}))
        assert (dry.records, dry.matched, dry.published) == (5, 3, 0)
        before_dedup = deduplicated()
        result = await replay(settings, selected)
        assert (result.records, result.matched, result.published) == (5, 3, 3)
        records, _ = await read_all(settings, topics.USAGE)
        replayed = [r for r in records if dict(r.headers).get("billstream-replay-id")]
        assert len(records) == 13 and len(replayed) == 3
        for r in replayed:
            headers = {k: v.decode() for k, v in r.headers}
            assert headers["billstream-replay-id"] == result.audit_id
            assert headers["billstream-replay-of"].startswith(f"{topics.USAGE}/")
            event = json.loads(r.value)
            assert event["tenantid"] == "acme" and event["id"].startswith("b-")
            assert r.key == f"acme:{event['subject']}".encode()  # keys kept

        # by offset, one partition, bounded: [1, 3)
        partition = replayed[0].partition
        by_offset = await replay(
            settings,
            request(
                into=topics.USAGE,
                start=parse_bound("1", "--from"),
                end=parse_bound("3", "--to"),
                partition=partition,
            ),
        )
        assert by_offset.records == 2 == by_offset.published
        assert [(p.partition, p.start, p.end) for p in by_offset.partitions] == [(partition, 1, 3)]
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
        await wait_for(lambda: deduplicated() - before_dedup == 5, timeout_s=10)
        assert await totals(sessions, acme) == (8, 40)  # unchanged
        assert await totals(sessions, globex) == (2, 14)
    audit = await audit_events(settings, 2)
    first = audit[0]
    assert [a.id for a in audit] == [result.audit_id, by_offset.audit_id]
    assert (first.data.mode, first.data.into, first.tenantid) == ("topic", topics.USAGE, "acme")
    assert (first.data.tenant, first.data.type_glob) == ("acme", "api.*")


async def test_replay_refuses_bad_requests_before_doing_anything(settings: Settings) -> None:
    with pytest.raises(UsageError, match="choose one mode"):
        await replay(settings, request(start=parse_bound("0", "--from")))
    with pytest.raises(UsageError) as e:
        await replay(
            settings,
            request(
                group=USAGE_GROUP, start=parse_bound("0", "--from"), end=parse_bound("5", "--to")
            ),
        )
    assert e.value.option == "--to"
    with pytest.raises(OpsError, match="does not exist") as missing:
        await replay(
            settings, request(topic="nope", into=topics.USAGE, start=parse_bound("0", "x"))
        )
    assert missing.value.option == "--topic"
    with pytest.raises(OpsError) as bad_partition:
        await replay(
            settings, request(into=topics.USAGE, start=parse_bound("0", "x"), partition=99)
        )
    assert bad_partition.value.option == "--partition"
    assert await read_all(settings, topics.EVENTS_OPS) == ([], {0: 0, 1: 0, 2: 0})

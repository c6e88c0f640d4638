"""usage.totals_changed: a batch's deltas grouped into one totals key per (subject, meter,
hour), with the events of the batch behind each, and the events built from them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
from pydantic import TypeAdapter

from schemas.envelope import WIRE
from schemas.metering import Aggregation, MeteringEvent, UsageTotalsChanged
from schemas.usage import UsageEvent
from workers.metering import service, totals
from workers.metering.service import MeterDef, PeriodKey

H10 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
H11 = H10 + timedelta(hours=1)
M = timedelta(minutes=1)
_ids = count()


def meter(key: str, aggregation: str, *, tenant: str = "acme", **kw: Any) -> MeterDef:
    return MeterDef(
        id=f"id-{tenant}-{key}",
        tenant_id=tenant,
        key=key,
        event_type="api.call",
        aggregation=aggregation,
        value_property=None if aggregation == "count" else "$.amount",
        group_by=kw.get("group_by", {}),
    )


def call(subject: str, at: datetime, amount: Any, region: str | None, **kw: Any) -> UsageEvent:
    data: dict[str, Any] = {"amount": amount}
    if region is not None:
        data["region"] = region
    return UsageEvent(
        id=f"e{next(_ids)}",
        source="test",
        type=kw.get("type", "api.call"),
        subject=subject,
        time=at,
        data=data,
        tenantid=kw.get("tenant", "acme"),
    )


REGION = {"region": "$.region"}
CALLS = meter("calls", "count", group_by=REGION)
SPEND = meter("spend", "sum", group_by=REGION)
USERS = meter("users", "unique_count", group_by=REGION)
METERS = [SPEND, CALLS, USERS]


def keys(touched: list[totals.TouchedTotal]) -> list[tuple[str, str, str, datetime, int]]:
    return [
        (t.key.meter.tenant_id, t.key.subject, t.key.meter.key, t.key.start, t.events)
        for t in touched
    ]


def test_one_key_per_subject_meter_and_hour_every_group_combined_with_its_event_count() -> None:
    events = [
        call("cust-2", H11 + 5 * M, 1, "eu"),
        call("cust-1", H10 + 1 * M, 2, "eu"),
        call("cust-1", H10 + 2 * M, 3, "us"),  # another group value, same hour: same key
        call("cust-1", H10 + 59 * M, 4, None),  # no group value at all: same key
        call("cust-1", H11, 5, "eu"),  # the next hour starts a key of its own
        call("cust-2", H11 + 50 * M, 6, "us"),
        call("cust-2", H10 + 30 * M, 7, "us"),
    ]
    result = service.aggregate(events, METERS)
    assert not result.rejected
    assert len(result.deltas) > 5 * len(METERS)  # group values were kept apart in the deltas

    touched = totals.touched_totals(result.deltas, METERS)

    assert keys(touched) == [
        ("acme", "cust-1", "calls", H10, 3),
        ("acme", "cust-1", "calls", H11, 1),
        ("acme", "cust-1", "spend", H10, 3),
        ("acme", "cust-1", "spend", H11, 1),
        ("acme", "cust-1", "users", H10, 3),
        ("acme", "cust-1", "users", H11, 1),
        ("acme", "cust-2", "calls", H10, 1),
        ("acme", "cust-2", "calls", H11, 2),
        ("acme", "cust-2", "spend", H10, 1),
        ("acme", "cust-2", "spend", H11, 2),
        ("acme", "cust-2", "users", H10, 1),
        ("acme", "cust-2", "users", H11, 2),
    ]  # sorted by (tenant, subject, meter, hour)
    for t in touched:
        assert t.key.end == t.key.start + timedelta(hours=1)
        assert t.key.meter in METERS


def test_only_the_events_a_meter_used_count_and_rejected_events_count_nowhere() -> None:
    latest = meter("level", "latest", tenant="globex")
    other_type = MeterDef(
        id="id-acme-pages",
        tenant_id="acme",
        key="pages",
        event_type="page.view",
        aggregation="count",
        value_property=None,
        group_by={},
    )
    meters = [SPEND, other_type, latest]
    events = [
        call("cust-1", H10, 1, "eu"),
        call("cust-1", H10, "lots", "eu"),  # rejected: not a number
        call("cust-1", H10, 2, "us", type="page.view"),  # read by pages only
        call("cust-1", H10, 3, "us", type="unmetered"),  # rejected: no meter reads it
        call("cust-1", H10 + 10 * M, 4, None, tenant="globex"),
        call("cust-1", H10 + 20 * M, 5, None, tenant="globex"),
    ]
    result = service.aggregate(events, meters)
    assert [i for i, _ in result.rejected] == [1, 3]

    touched = totals.touched_totals(result.deltas, meters)

    assert keys(touched) == [
        ("acme", "cust-1", "pages", H10, 1),
        ("acme", "cust-1", "spend", H10, 1),
        ("globex", "cust-1", "level", H10, 2),
    ]


def test_nothing_touched_emits_nothing() -> None:
    assert totals.touched_totals([], METERS) == []
    assert totals.totals_changed([], [], H10) == []


def decoded(raw: bytes) -> UsageTotalsChanged:
    event = TypeAdapter(MeteringEvent).validate_json(raw, context=WIRE)
    assert isinstance(event, UsageTotalsChanged)
    return event


def test_the_events_carry_the_new_totals_in_the_envelope_downstream_consumers_read() -> None:
    events = [call("cust-1", H10, "1.5", "eu"), call("cust-1", H10 + M, "2.25", "us")]
    touched = totals.touched_totals(service.aggregate(events, [SPEND, USERS]).deltas, METERS)
    now = datetime(2024, 5, 1, 12, 34, 56, 789, tzinfo=UTC)

    built = totals.totals_changed(touched, [Decimal("10.75"), Decimal(1)], now)

    (t1, raw_spend), (t2, raw_users) = built
    assert (t1, t2) == ("acme", "acme")
    spend, users = decoded(raw_spend), decoded(raw_users)
    assert spend.type == "usage.totals_changed"
    assert (spend.source, spend.tenantid, spend.subject, spend.time) == (
        service.SOURCE,
        "acme",
        "cust-1",
        now,
    )
    d = spend.data
    assert (d.meter_id, d.meter, d.subject) == (SPEND.id, "spend", "cust-1")
    assert d.aggregation is Aggregation.SUM
    assert (d.period_start, d.period_end) == (H10, H11)
    assert (d.total, d.events) == (Decimal("10.75"), 2)
    assert (users.data.meter, users.data.aggregation) == ("users", Aggregation.UNIQUE_COUNT)
    assert users.data.total == 1
    assert spend.id != users.id
    assert b'"total":"10.75"' in raw_spend  # an exact decimal string on the wire

    # byte for byte what the model would write for the same event
    assert raw_spend == spend.to_json()


@pytest.mark.parametrize(
    ("subject", "total"),
    [
        ('quote " backslash \\ tab \t', Decimal("1E+3")),
        ("unicode ünï 🧾", Decimal("-0.000001")),
        ("no value", None),
    ],
)
def test_any_subject_and_total_encode_as_the_schema_says(
    subject: str, total: Decimal | None
) -> None:
    key = PeriodKey(SPEND, subject, H10, H11)
    [(tenant, raw)] = totals.totals_changed([totals.TouchedTotal(key, 3)], [total], H11)
    event = decoded(raw)
    assert (tenant, event.subject, event.data.subject) == ("acme", subject, subject)
    assert event.data.total == total and event.data.events == 3
    assert raw == event.to_json()


def test_each_event_of_a_batch_has_its_own_uuid7_of_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = totals.new_ids(20_000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 20_000
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, text)
        assert before <= u.int >> 80 <= after  # its millisecond
    assert totals.new_ids(0) == []

"""Metering domain logic: folding usage events into hourly buckets, decoding, meter identity."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schemas.usage import UsageEvent
from workers.metering import service
from workers.metering.errors import MeterConflict
from workers.metering.service import MeterDef, UsageDelta

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EVENT_TYPE = "llm.completion"
_ids = count()


def meter(
    aggregation: str,
    value_property: str | None = "$.tokens",
    *,
    key: str | None = None,
    group_by: dict[str, str] | None = None,
    event_type: str = EVENT_TYPE,
    tenant: str = "acme",
) -> MeterDef:
    return MeterDef(
        id=f"meter-{key or aggregation}-{tenant}",
        tenant_id=tenant,
        key=key or aggregation,
        event_type=event_type,
        aggregation=aggregation,
        value_property=None if aggregation == "count" else value_property,
        group_by=group_by or {},
    )


def event(
    data: dict[str, Any] | None = None,
    *,
    at: datetime = T0,
    subject: str = "customer-1",
    type: str = EVENT_TYPE,
    tenant: str = "acme",
) -> UsageEvent:
    # not validated: the service must refuse what the door would, even when it is bypassed
    return UsageEvent.model_construct(
        id=f"evt-{next(_ids)}",
        source="test",
        type=type,
        subject=subject,
        time=at,
        data=data or {},
        tenantid=tenant,
    )


def tokens(value: Any, *, at: datetime = T0, **data: Any) -> UsageEvent:
    return event({"tokens": value, **data}, at=at)


def only_delta(result: service.Aggregated, meter_def: MeterDef) -> UsageDelta:
    deltas = [d for d in result.deltas if d.meter_id == meter_def.id]
    assert len(deltas) == 1, deltas
    return deltas[0]


def groups(delta: UsageDelta) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(delta.groups)
    return parsed


# --- every aggregation ----------------------------------------------------------------


def test_count_counts_events_whatever_their_data() -> None:
    m = meter("count")
    result = service.aggregate([event(), event({"x": "y"}), tokens("not a number")], [m])
    delta = only_delta(result, m)
    assert result.rejected == []
    assert delta.count == 3
    assert delta.sum is None and delta.latest_value is None
    assert (delta.tenant_id, delta.subject, delta.bucket) == ("acme", "customer-1", T0)


def test_sum_adds_values_exactly() -> None:
    m = meter("sum")
    values = [Decimal("0.1"), Decimal("0.2"), 3, "4.5", Decimal("-1")]
    result = service.aggregate([tokens(v) for v in values], [m])
    delta = only_delta(result, m)
    assert delta.sum == Decimal("6.8")
    assert delta.count == 5


def test_sum_is_exact_beyond_28_significant_digits() -> None:
    """PostgreSQL numeric is exact; the in-batch fold must not round at Python's default
    28 digits, or totals would depend on where batch boundaries fell."""
    m = meter("sum")
    big = Decimal("999999999999999.999999999999")  # the largest metered value, 27 digits
    result = service.aggregate([tokens(big) for _ in range(11)], [m])
    assert only_delta(result, m).sum == Decimal("10999999999999999.999999999989")  # 29


def test_min_and_max() -> None:
    lo, hi = meter("min", key="lo"), meter("max", key="hi")
    values = [Decimal("5"), Decimal("-2.5"), 7, Decimal("3")]
    result = service.aggregate([tokens(v) for v in values], [lo, hi])
    assert only_delta(result, lo).min == Decimal("-2.5")
    assert only_delta(result, hi).max == Decimal("7")


def test_latest_picks_the_greatest_event_time_not_the_last_arrival() -> None:
    m = meter("latest")
    result = service.aggregate(
        [
            tokens(1, at=T0 + timedelta(minutes=10)),
            tokens(2, at=T0 + timedelta(minutes=40)),  # the latest
            tokens(3, at=T0 + timedelta(minutes=20)),  # arrives last, happened earlier
        ],
        [m],
    )
    delta = only_delta(result, m)
    assert delta.latest_value == Decimal(2)
    assert delta.latest_time == T0 + timedelta(minutes=40)


def test_latest_ties_on_time_go_to_the_greater_value_in_any_order() -> None:
    m = meter("latest")
    at = T0 + timedelta(minutes=5)
    for values in ([4, 9, 1], [9, 4, 1], [1, 4, 9]):
        result = service.aggregate([tokens(v, at=at) for v in values], [m])
        assert only_delta(result, m).latest_value == Decimal(9), values


def test_latest_compares_instants_across_offsets() -> None:
    m = meter("latest")
    plus_two = timezone(timedelta(hours=2))
    result = service.aggregate(
        [
            tokens(1, at=datetime(2024, 5, 1, 14, 50, tzinfo=plus_two)),  # 12:50Z
            tokens(2, at=datetime(2024, 5, 1, 12, 40, tzinfo=UTC)),
        ],
        [m],
    )
    assert only_delta(result, m).latest_value == Decimal(1)


def test_unique_count_collects_distinct_values_per_bucket() -> None:
    m = meter("unique_count", "$.user")
    events = [
        event({"user": "ann"}),
        event({"user": "bob"}),
        event({"user": "ann"}),
        event({"user": 7}),
        event({"user": "ann"}, at=T0 + timedelta(hours=1)),
    ]
    result = service.aggregate(events, [m])
    assert result.rejected == []
    by_bucket: dict[datetime, set[str]] = {}
    for u in result.uniques:
        assert (u.tenant_id, u.meter_id, u.subject) == ("acme", m.id, "customer-1")
        by_bucket.setdefault(u.bucket, set()).add(u.value)
    assert by_bucket == {T0: {"ann", "bob", "7"}, T0 + timedelta(hours=1): {"ann"}}
    assert len(result.uniques) == 4  # no duplicates handed to storage
    counts = {d.bucket: d.count for d in result.deltas}
    assert counts == {T0: 4, T0 + timedelta(hours=1): 1}


def test_unique_count_refuses_a_null_value() -> None:
    m = meter("unique_count", "$.user")
    result = service.aggregate([event({"user": None}), event({"user": "ann"})], [m])
    assert [i for i, _ in result.rejected] == [0]
    assert "data.user is null" in result.rejected[0][1]
    assert [u.value for u in result.uniques] == ["ann"]


# --- groups and buckets ---------------------------------------------------------------


def test_group_by_splits_buckets_and_a_missing_group_is_none() -> None:
    m = meter("sum", group_by={"model": "$.model", "region": "$.geo.region"})
    events = [
        tokens(1, model="a", geo={"region": "eu"}),
        tokens(2, model="a", geo={"region": "eu"}),
        tokens(4, model="b", geo={"region": "eu"}),
        tokens(8, model="a"),  # no region
        tokens(16, model=None, geo={"region": "us"}),  # explicit null
    ]
    result = service.aggregate(events, [m])
    sums = {tuple(sorted(groups(d).items())): d.sum for d in result.deltas}
    assert sums == {
        (("model", "a"), ("region", "eu")): Decimal(3),
        (("model", "b"), ("region", "eu")): Decimal(4),
        (("model", "a"), ("region", None)): Decimal(8),
        (("model", None), ("region", "us")): Decimal(16),
    }


def test_group_values_of_every_json_kind_become_text() -> None:
    m = meter("count", group_by={"g": "$.g"})
    values = [True, 3, Decimal("2.50"), {"b": 1, "a": 2}, ["x"], "text"]
    result = service.aggregate([event({"g": v}) for v in values], [m])
    assert sorted(groups(d)["g"] for d in result.deltas) == sorted(
        ["true", "3", "2.5", '{"a":2,"b":1}', '["x"]', "text"]
    )


def test_subjects_are_kept_apart() -> None:
    m = meter("count")
    events = [event(subject="a"), event(subject="b"), event(subject="a")]
    result = service.aggregate(events, [m])
    assert {d.subject: d.count for d in result.deltas} == {"a": 2, "b": 1}


def test_buckets_are_utc_hours_whatever_the_offset() -> None:
    m = meter("count")
    plus_two = timezone(timedelta(hours=2))
    minus_530 = timezone(-timedelta(hours=5, minutes=30))
    events = [
        event(at=datetime(2024, 5, 1, 1, 30, tzinfo=plus_two)),  # 2024-04-30 23:30Z
        event(at=datetime(2024, 4, 30, 18, 15, tzinfo=minus_530)),  # 2024-04-30 23:45Z
        event(at=datetime(2024, 4, 30, 18, 45, tzinfo=minus_530)),  # 2024-05-01 00:15Z
    ]
    result = service.aggregate(events, [m])
    buckets = {d.bucket: d.count for d in result.deltas}
    assert buckets == {
        datetime(2024, 4, 30, 23, tzinfo=UTC): 2,
        datetime(2024, 5, 1, 0, tzinfo=UTC): 1,
    }
    assert all(b.utcoffset() == timedelta(0) for b in buckets)


def test_hour_bucket_boundaries() -> None:
    assert service.hour_bucket(datetime(2024, 5, 1, 12, 59, 59, 999999, tzinfo=UTC)) == T0
    assert service.hour_bucket(T0) == T0
    assert service.hour_bucket(T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


@pytest.mark.parametrize("minutes", [0, 60, -300, 330, -570, 345])  # +05:30, -09:30, +05:45
def test_hour_bucket_in_any_zone_is_the_utc_hour(minutes: int) -> None:
    zone = timezone(timedelta(minutes=minutes))
    for m in range(0, 24 * 60, 7):  # every 7 minutes of a day, twice (memoised the 2nd time)
        local = datetime(2024, 5, 1, tzinfo=zone) + timedelta(minutes=m, seconds=13)
        expected = local.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        assert service.hour_bucket(local) == expected
        assert service.hour_bucket(local) == expected


def test_late_events_land_in_their_own_hour() -> None:
    m = meter("sum")
    events = [
        tokens(1, at=T0 + timedelta(hours=2, minutes=5)),
        tokens(2, at=T0 + timedelta(hours=2, minutes=55)),
        tokens(4, at=T0 + timedelta(minutes=59)),  # arrives late
        tokens(8, at=T0 - timedelta(days=3)),  # very late
    ]
    result = service.aggregate(events, [m])
    assert {d.bucket: d.sum for d in result.deltas} == {
        T0 + timedelta(hours=2): Decimal(3),
        T0: Decimal(4),
        T0 - timedelta(days=3): Decimal(8),
    }


# --- rejections -----------------------------------------------------------------------


def test_an_event_no_meter_reads_is_rejected_and_the_rest_aggregate() -> None:
    m = meter("sum")
    events = [tokens(1), event({"tokens": 5}, type="other.type"), tokens(2)]
    result = service.aggregate(events, [m])
    assert result.rejected == [(1, "no meter reads event type 'other.type'")]
    assert only_delta(result, m).sum == Decimal(3)


def test_meters_only_read_their_own_tenants_events() -> None:
    m = meter("count", tenant="acme")
    result = service.aggregate([event(tenant="acme"), event(tenant="globex")], [m])
    assert [i for i, _ in result.rejected] == [1]
    assert only_delta(result, m).count == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "meter 'sum' needs $.tokens, which the event lacks"),
        ({"other": 1}, "meter 'sum' needs $.tokens, which the event lacks"),
        ({"tokens": "lots"}, "data.tokens is 'lots', not a number"),
        ({"tokens": ""}, "data.tokens is '', not a number"),
        ({"tokens": True}, "data.tokens is true, not a number"),
        ({"tokens": False}, "data.tokens is false, not a number"),
        ({"tokens": None}, "data.tokens is null, not a number"),
        ({"tokens": Decimal("NaN")}, "data.tokens is Decimal('NaN'), not a finite number"),
        ({"tokens": "NaN"}, "data.tokens is 'NaN', not a number"),
        ({"tokens": "-Infinity"}, "data.tokens is '-Infinity', not a number"),
        ({"tokens": "1_000"}, "data.tokens is '1_000', not a number"),
        (
            {"tokens": "1e2000"},
            "data.tokens is '1e2000', out of range: metered values must be at most 10**15 "
            "in magnitude",
        ),
        ({"tokens": 1.5}, "data.tokens is a float, not a number"),
        ({"tokens": [1]}, "data.tokens is a list, not a number"),
        ({"tokens": {"n": 1}}, "data.tokens is a dict, not a number"),
    ],
)
def test_unusable_values_are_rejected_with_a_reason_naming_the_field(
    data: dict[str, Any], reason: str
) -> None:
    m = meter("sum")
    result = service.aggregate([tokens(1), event(data), tokens(2)], [m])
    assert result.rejected == [(1, reason)]
    delta = only_delta(result, m)
    assert (delta.count, delta.sum) == (2, Decimal(3))


def test_reason_names_nested_and_quoted_fields() -> None:
    nested = meter("sum", "$.usage['output tokens']")
    result = service.aggregate([event({"usage": {"output tokens": "many"}})], [nested])
    assert result.rejected == [(0, "data.usage['output tokens'] is 'many', not a number")]


def test_numeric_strings_are_read_as_exact_numbers() -> None:
    m = meter("sum")
    result = service.aggregate([tokens(" 1.10 "), tokens("2e3")], [m])
    assert result.rejected == []
    assert only_delta(result, m).sum == Decimal("2001.10")


def test_an_event_one_of_its_meters_cannot_read_counts_nowhere() -> None:
    calls = meter("count", key="calls")
    total = meter("sum", key="tokens")
    users = meter("unique_count", "$.user", key="users")
    events = [
        event({"tokens": 5, "user": "ann"}),
        event({"user": "bob"}),  # `tokens` cannot read it
        event({"tokens": 7, "user": "cid"}),
    ]
    result = service.aggregate(events, [calls, total, users])
    assert result.rejected == [(1, "meter 'tokens' needs $.tokens, which the event lacks")]
    assert only_delta(result, calls).count == 2
    assert only_delta(result, total).sum == Decimal(12)
    assert {u.value for u in result.uniques} == {"ann", "cid"}


def test_one_batch_with_nothing_usable_gives_no_deltas() -> None:
    m = meter("sum")
    result = service.aggregate([event({"tokens": "x"}), event({})], [m])
    assert result.deltas == [] and result.uniques == []
    assert [i for i, _ in result.rejected] == [0, 1]


# --- decoding -------------------------------------------------------------------------


def record(data_json: str, **attrs: Any) -> bytes:
    head = {
        "id": "evt-1",
        "source": "test",
        "type": EVENT_TYPE,
        "subject": "customer-1",
        "time": "2024-05-01T12:00:00Z",
        "tenantid": "acme",
        **attrs,
    }
    return (json.dumps(head)[:-1] + ', "data": ' + data_json + "}").encode()


def test_decode_turns_json_numbers_into_exact_decimals() -> None:
    first = service.decode_usage(record('{"tokens": 0.1}'))
    second = service.decode_usage(record('{"tokens": 0.2}', id="evt-2"))
    assert first.data["tokens"] == Decimal("0.1")
    assert type(first.data["tokens"]) is Decimal
    m = meter("sum")
    result = service.aggregate([first, second], [m])
    assert only_delta(result, m).sum == Decimal("0.3")


def test_decode_keeps_integers_and_long_decimals_exact() -> None:
    big = 10**15  # the largest metered value (docs/adr/0043-bounded-values.md)
    decoded = service.decode_usage(
        record(f'{{"n": {big}, "d": 999999999999999.000000000001, "e": 1e2}}')
    )
    assert decoded.data["n"] == big
    assert decoded.data["d"] == Decimal("999999999999999.000000000001")  # 27 digits
    assert decoded.data["e"] == Decimal(100)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_decode_refuses_nan_and_infinity(constant: str) -> None:
    with pytest.raises(ValueError, match=constant):
        service.decode_usage(record(f'{{"tokens": {constant}}}'))


def test_decode_refuses_invalid_records() -> None:
    with pytest.raises(ValueError):
        service.decode_usage(b"not json")
    with pytest.raises(ValueError):
        service.decode_usage(record("{}", time="2024-05-01T12:00:00"))  # naive time


# --- meter identity -------------------------------------------------------------------


def test_an_identical_definition_is_not_a_conflict() -> None:
    existing = meter("sum", group_by={"model": "$.model"})
    again = replace(existing, id="another-id", name="Tokens", description="renamed")
    service.ensure_same_definition(existing, again)  # does not raise


@pytest.mark.parametrize(
    "change",
    [
        {"aggregation": "max"},
        {"event_type": "other.type"},
        {"value_property": "$.output_tokens"},
        {"group_by": {"model": "$.model", "region": "$.region"}},
        {"group_by": {}},
    ],
)
def test_a_different_definition_is_a_conflict(change: dict[str, Any]) -> None:
    existing = meter("sum", group_by={"model": "$.model"})
    with pytest.raises(MeterConflict) as caught:
        service.ensure_same_definition(existing, replace(existing, id="new", **change))
    problem = caught.value.to_problem()
    assert problem["code"] == "meter_conflict"
    assert problem["field"] == "key"
    assert "'sum' already exists with a different definition" in problem["message"]


def test_one_number_spelled_three_ways_is_one_unique_value_and_one_group() -> None:
    meter = MeterDef(
        id="m-u",
        tenant_id="acme",
        key="u",
        event_type="api.call",
        aggregation="unique_count",
        value_property="$.v",
        group_by={"tier": "$.tier"},
    )
    events = [
        UsageEvent(
            id=f"e{i}",
            source="s",
            type="api.call",
            subject="c",
            tenantid="acme",
            time=datetime(2026, 11, 22, 10, tzinfo=UTC),
            data={"v": v, "tier": v},
        )
        for i, v in enumerate([1, Decimal("1.0"), Decimal("1E+0")])
    ]
    out = service.aggregate(events, [meter])
    assert {u.value for u in out.uniques} == {"1"}
    assert [d.groups for d in out.deltas] == ['{"tier":"1"}']


def test_hour_bucket_tells_the_two_hours_of_a_dst_fold_apart() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2024, 10, 27, 2, 30, tzinfo=berlin)  # 00:30 UTC (summer time)
    second = first.replace(fold=1)  # 01:30 UTC (winter time), the same wall clock
    assert service.hour_bucket(first) == datetime(2024, 10, 27, 0, tzinfo=UTC)
    assert service.hour_bucket(second) == datetime(2024, 10, 27, 1, tzinfo=UTC)

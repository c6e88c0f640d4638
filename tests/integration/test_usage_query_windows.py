"""The usage query's windows at their edges, against the real PostgreSQL: day windows cut by
a range that does not start or end at midnight, one window over a range given in another
zone, nothing at all when there is no usage, and values kept digit for digit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from storage.metering import MeterDef, UniqueValue, UsageDelta, UsageRepository
from tests.conftest import TenantKey
from tests.integration.support import Sessions, insert_meters, query

D = Decimal
H = timedelta(hours=1)
DAY1 = datetime(2026, 10, 30, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)

METERS = [
    {
        "key": "tokens",
        "event_type": "llm.call",
        "aggregation": "sum",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
    },
    {
        "key": "users",
        "event_type": "llm.call",
        "aggregation": "unique_count",
        "value_property": "$.user",
        "group_by": {"model": "$.model"},
    },
]


def delta(m: MeterDef, subject: str, model: str, at: datetime, total: str) -> UsageDelta:
    return UsageDelta(
        tenant_id="acme",
        meter_id=m.id,
        subject=subject,
        groups=f'{{"model":"{model}"}}',
        bucket=at,
        count=1,
        sum=D(total),
        min=D(total),
        max=D(total),
        latest_time=at,
        latest_value=D(total),
    )


async def seed(sessions: Sessions) -> dict[str, MeterDef]:
    meters = await insert_meters(sessions, "acme", METERS)
    tokens, users = meters["tokens"], meters["users"]
    # day 1: 05:00 and 22:00; day 2: 03:00 and 23:00; day 3: 01:00
    deltas = [
        delta(tokens, "alice", "small", DAY1 + 5 * H, "1.50"),
        delta(tokens, "alice", "large", DAY1 + 22 * H, "2.25"),
        delta(tokens, "alice", "small", DAY2 + 3 * H, "0.10"),
        delta(tokens, "alice", "small", DAY2 + 23 * H, "4.00"),
        delta(tokens, "alice", "large", DAY3 + 1 * H, "8.125"),
        delta(tokens, "bob", "small", DAY2 + 3 * H, "100"),
    ]
    uniques = [
        UniqueValue("acme", users.id, "alice", '{"model":"small"}', DAY1 + 5 * H, "u1"),
        UniqueValue("acme", users.id, "alice", '{"model":"small"}', DAY2 + 3 * H, "u1"),
        UniqueValue("acme", users.id, "alice", '{"model":"small"}', DAY2 + 23 * H, "u2"),
    ]
    async with sessions() as session, session.begin():
        await UsageRepository(session).apply(deltas, uniques)
    return meters


async def test_day_windows_are_cut_by_a_range_that_does_not_start_at_midnight(
    sessions: Sessions, tenant: TenantKey
) -> None:
    m = await seed(sessions)
    start, end = DAY1 + 20 * H, DAY3 + 2 * H  # 20:00 on day 1 to 02:00 on day 3
    rows = await query(
        sessions, m["tokens"], start=start, end=end, subjects=["alice"], window="day",
        group_by=["model"],
    )  # fmt: skip
    assert [(r.window_start, r.window_end, r.subject, r.groups, r.value) for r in rows] == [
        (start, DAY2, "alice", {"model": "large"}, D("2.25")),  # 05:00 is before the range
        (DAY2, DAY3, "alice", {"model": "small"}, D("4.10")),
        (DAY3, end, "alice", {"model": "large"}, D("8.125")),
    ]
    assert [str(r.value) for r in rows] == ["2.25", "4.10", "8.125"]  # digit for digit
    # by subject: bob's day 2 beside alice's, in subject order within the day
    rows = await query(
        sessions, m["tokens"], start=start, end=end, window="day", group_by=["subject"]
    )
    assert [(r.window_start, r.window_end, r.subject, r.value) for r in rows] == [
        (start, DAY2, "alice", D("2.25")),
        (DAY2, DAY3, "alice", D("4.10")),
        (DAY2, DAY3, "bob", D("100")),
        (DAY3, end, "alice", D("8.125")),
    ]
    # distinct values per day, cut the same way: u1 on day 1 is before the range
    rows = await query(sessions, m["users"], start=start, end=end, window="day")
    assert [(r.window_start, r.window_end, r.value) for r in rows] == [(DAY2, DAY3, 2)]


async def test_hour_windows_end_at_the_range(sessions: Sessions, tenant: TenantKey) -> None:
    m = await seed(sessions)
    rows = await query(
        sessions, m["tokens"], start=DAY2, end=DAY3, subjects=["alice"], window="hour"
    )
    assert [(r.window_start, r.window_end, r.value) for r in rows] == [
        (DAY2 + 3 * H, DAY2 + 4 * H, D("0.10")),
        (DAY2 + 23 * H, DAY3, D("4.00")),
    ]


async def test_one_window_over_a_range_in_another_zone_is_given_in_utc(
    sessions: Sessions, tenant: TenantKey
) -> None:
    m = await seed(sessions)
    jakarta = timezone(timedelta(hours=7))
    start, end = DAY2.astimezone(jakarta), DAY3.astimezone(jakarta)
    rows = await query(sessions, m["tokens"], start=start, end=end, subjects=["alice"])
    assert [(r.window_start, r.window_end, r.subject, r.value) for r in rows] == [
        (DAY2, DAY3, "alice", D("4.10"))
    ]
    assert rows[0].window_start is not None and rows[0].window_start.utcoffset() == timedelta(0)
    # no range at all: one window without bounds, over everything
    rows = await query(sessions, m["tokens"], group_by=["model"])
    assert [(r.window_start, r.window_end, r.groups, r.value) for r in rows] == [
        (None, None, {"model": "large"}, D("10.375")),
        (None, None, {"model": "small"}, D("105.60")),
    ]


async def test_no_usage_is_no_rows_in_every_window(sessions: Sessions, tenant: TenantKey) -> None:
    m = await seed(sessions)
    later = DAY3 + timedelta(days=10)
    for meter in m.values():
        for window in ("none", "day", "hour"):
            for group_by in ([], ["model"], ["subject"]):
                assert (
                    await query(
                        sessions, meter, start=later, end=later + H, window=window,  # type: ignore[arg-type]
                        group_by=group_by,
                    )
                    == []
                ), (meter.key, window, group_by)  # fmt: skip
                assert await query(sessions, meter, subjects=["carol"], group_by=group_by) == []

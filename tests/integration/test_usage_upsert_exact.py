"""A batch's hourly deltas reach PostgreSQL digit for digit (their numbers travel as text):
integers, Decimals with twelve places, exponent spellings, negatives and missing values, once
inserted and once added to what is there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text

from storage.metering import UsageDelta, UsageRepository
from tests.conftest import TenantKey
from tests.integration.support import Sessions, insert_meters

D = Decimal
HOUR = datetime(2026, 10, 30, 5, tzinfo=UTC)
METERS = [
    {"key": "tokens", "event_type": "llm.call", "aggregation": "sum", "value_property": "$.n"},
    {"key": "calls", "event_type": "llm.call", "aggregation": "count"},
]


def delta(meter_id: str, subject: str, count: int, *values: Decimal | None) -> UsageDelta:
    total, low, high, latest = values
    at = HOUR + timedelta(minutes=count)
    return UsageDelta("acme", meter_id, subject, "{}", HOUR, count, total, low, high, at, latest)


async def rows(sessions: Sessions) -> dict[str, tuple[object, ...]]:
    async with sessions() as session:
        result = await session.execute(
            text(
                "SELECT subject, count, sum::text, min::text, max::text, latest_value::text "
                "FROM usage_hourly ORDER BY subject"
            )
        )
        return {r[0]: tuple(r[1:]) for r in result}


async def test_numbers_are_stored_and_added_exactly(sessions: Sessions, tenant: TenantKey) -> None:
    meters = await insert_meters(sessions, "acme", METERS)
    tokens, calls = meters["tokens"].id, meters["calls"].id
    first = [
        delta(tokens, "a", 2, D("0.000000000001"), D("-1.5E+3"), D("1E+15"), D("1.50")),
        delta(tokens, "b", 1, D("999999999999999.999999999999"), D("-0"), D(7), D("-2.25")),
        delta(calls, "c", 3, None, None, None, None),
    ]
    async with sessions() as session, session.begin():
        await UsageRepository(session).apply(first, [])
    assert await rows(sessions) == {
        "a": (2, "0.000000000001", "-1500", "1000000000000000", "1.50"),
        "b": (1, "999999999999999.999999999999", "0", "7", "-2.25"),
        "c": (3, None, None, None, None),
    }
    # the same buckets again, later: added to, the lowest and highest kept, the latest wins
    again = [
        delta(tokens, "a", 4, D("0.999999999999"), D("-1500.000000000001"), D(3), D("12")),
        delta(calls, "c", 5, None, None, None, None),
    ]
    async with sessions() as session, session.begin():
        await UsageRepository(session).apply(again, [])
    assert await rows(sessions) == {
        "a": (6, "1.000000000000", "-1500.000000000001", "1000000000000000", "12"),
        "b": (1, "999999999999999.999999999999", "0", "7", "-2.25"),
        "c": (8, None, None, None, None),
    }

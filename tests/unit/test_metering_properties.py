"""Batch boundaries must not change metered usage.

The worker folds each batch into per-bucket deltas (``service.aggregate``) and the upsert
in ``storage/metering.py`` (``_UPSERT_HOURLY``) merges each delta into the stored row.
Whatever way a stream of events is cut into batches, the stored rows must come out the
same as if the whole stream had been one batch; and that one batch must agree with a
plain recount of the events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from fractions import Fraction
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.usage import UsageEvent
from workers.metering import service
from workers.metering.service import MeterDef, UniqueValue, UsageDelta

TENANT = "acme"
BASE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

METERS = [
    MeterDef("m-count", TENANT, "calls", "call", "count", None, {"model": "$.model"}),
    MeterDef("m-sum", TENANT, "total", "call", "sum", "$.v", {"model": "$.model"}),
    MeterDef("m-min", TENANT, "low", "call", "min", "$.v", {}),
    MeterDef("m-max", TENANT, "high", "call", "max", "$.v", {}),
    MeterDef("m-latest", TENANT, "last", "call", "latest", "$.v", {"model": "$.model"}),
    MeterDef("m-unique", TENANT, "users", "call", "unique_count", "$.user", {}),
    MeterDef("m-pings", TENANT, "pings", "ping", "count", None, {}),
]

# --- strategies -----------------------------------------------------------------------

# exact decimals: small ones, and long ones (up to the 27 digits of the metered-value bounds:
# below 10**15, 12 decimal places) whose sums go past Python's default 28-digit context
values = st.one_of(
    st.integers(min_value=-5, max_value=5).map(Decimal),
    st.sampled_from([1, 3, 12, 20, 27]).flatmap(
        lambda n: st.builds(
            lambda sign, digits, exponent: Decimal(f"{sign}{digits}E{exponent}"),
            st.sampled_from(["", "-"]),
            st.text(alphabet="0123456789", min_size=n, max_size=n),
            st.integers(min_value=-12, max_value=15 - n),
        )
    ),
)
offsets = st.integers(min_value=-48, max_value=56).map(
    lambda quarters: timezone(timedelta(minutes=15 * quarters))
)
# few distinct instants (so latest ties happen) over three hours, in any order
instants = st.integers(min_value=0, max_value=12).map(lambda k: BASE + timedelta(minutes=13 * k))
unusable = st.sampled_from(["n/a", True, None, "NaN", [1]])


@st.composite
def events(draw: st.DrawFn) -> UsageEvent:
    data: dict[str, Any] = {}
    kind = draw(st.sampled_from(["call", "call", "call", "ping", "unread"]))
    if draw(st.booleans()):
        data["model"] = draw(st.sampled_from(["a", "b", None]))
    if kind == "call":
        value = draw(st.one_of(*[values] * 6, unusable, st.just("missing")))
        if value != "missing":
            data["v"] = value
        if draw(st.integers(0, 9)) > 0:
            data["user"] = draw(st.sampled_from(["ann", "bob", "cid", 7]))
    at = draw(instants)
    return UsageEvent(
        id=f"e{draw(st.integers(0, 10**9))}",
        source="test",
        type=kind,
        subject=draw(st.sampled_from(["c1", "c2"])),
        time=at.astimezone(draw(offsets)),
        data=data,
        tenantid=TENANT,
    )


# lists of every length (left alone, Hypothesis mostly draws short ones)
streams = st.sampled_from([0, 1, 2, 3, 5, 8, 13, 21, 34]).flatmap(
    lambda n: st.lists(events(), min_size=n, max_size=n)
)


# --- the upsert, in Python ------------------------------------------------------------

Key = tuple[str, str, str, datetime]


def key(d: UsageDelta | UniqueValue) -> Key:
    return (d.meter_id, d.subject, d.groups, d.bucket)


def _least(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    # LEAST/GREATEST in PostgreSQL ignore NULLs
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _row_gt(t1: datetime | None, v1: Decimal | None, t2: datetime, v2: Decimal | None) -> bool:
    """``(t1, v1) > (t2, v2)`` as PostgreSQL row comparison: NULL (unknown) counts as false."""
    if t1 is None:
        return False
    if t1 != t2:
        return t1 > t2
    if v1 is None or v2 is None:
        return False
    return v1 > v2


def upsert(row: UsageDelta | None, new: UsageDelta) -> UsageDelta:
    """One ``ON CONFLICT DO UPDATE`` of ``_UPSERT_HOURLY``; numeric arithmetic is exact."""
    if row is None:
        return replace(new)
    with localcontext() as ctx:
        ctx.prec = 1000  # PostgreSQL numeric does not round
        total = row.sum if new.sum is None else (row.sum if row.sum is not None else 0) + new.sum
    takes_latest = row.latest_time is None or _row_gt(
        new.latest_time, new.latest_value, row.latest_time, row.latest_value
    )
    return replace(
        row,
        count=row.count + new.count,
        sum=total,
        min=_least(row.min, new.min),
        max=_greatest(row.max, new.max),
        latest_value=new.latest_value if takes_latest else row.latest_value,
        latest_time=_greatest(row.latest_time, new.latest_time),
    )


@dataclass
class Store:
    rows: dict[Key, UsageDelta]
    uniques: set[UniqueValue]
    rejected: set[tuple[int, str]]


def apply_in_batches(stream: list[UsageEvent], cuts: list[int]) -> Store:
    store = Store({}, set(), set())
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, end in pairwise(bounds):
        result = service.aggregate(stream[start:end], METERS)
        assert len({key(d) for d in result.deltas}) == len(result.deltas)  # one per bucket
        for d in result.deltas:
            store.rows[key(d)] = upsert(store.rows.get(key(d)), d)
        store.uniques |= set(result.uniques)  # ON CONFLICT DO NOTHING
        store.rejected |= {(start + i, reason) for i, reason in result.rejected}
    return store


def comparable(row: UsageDelta) -> tuple[Any, ...]:
    # Decimal and datetime equality is by value / instant, as in the database
    return (row.count, row.sum, row.min, row.max, row.latest_time, row.latest_value)


# --- the properties -------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_any_split_into_batches_stores_the_same_as_one_batch(
    stream: list[UsageEvent], cuts: list[int]
) -> None:
    cuts = [c for c in cuts if c <= len(stream)]
    whole = apply_in_batches(stream, [])
    split = apply_in_batches(stream, cuts)
    assert split.rejected == whole.rejected
    assert split.uniques == whole.uniques
    assert split.rows.keys() == whole.rows.keys()
    for k, row in whole.rows.items():
        assert comparable(split.rows[k]) == comparable(row), k


@settings(max_examples=100, deadline=None)
@given(stream=streams)
def test_one_batch_agrees_with_a_plain_recount(stream: list[UsageEvent]) -> None:
    result = service.aggregate(stream, METERS)
    rejected = {i for i, _ in result.rejected}
    rows = {key(d): d for d in result.deltas}
    expected: dict[Key, list[tuple[datetime, Fraction]]] = {}
    expected_uniques: set[UniqueValue] = set()
    for i, e in enumerate(stream):
        v = e.data.get("v")
        usable = e.type == "ping" or (
            e.type == "call"
            and isinstance(v, Decimal)
            and v.is_finite()
            and e.data.get("user") is not None
        )
        assert (i not in rejected) == usable, (i, e.data)
        if not usable:
            continue
        bucket = datetime.fromtimestamp(e.time.timestamp() // 3600 * 3600, UTC)
        for m in METERS:
            if m.event_type != e.type:
                continue
            grouped = {name: e.data.get(path[2:]) for name, path in m.group_by.items()}
            k = (
                m.id,
                e.subject,
                json.dumps(grouped, sort_keys=True, separators=(",", ":")),
                bucket,
            )
            number = Fraction(v) if isinstance(v, Decimal) else Fraction(0)  # 0: a ping
            expected.setdefault(k, []).append((e.time, number))
            if m.aggregation == "unique_count":
                user = e.data["user"]
                expected_uniques.add(UniqueValue(TENANT, m.id, e.subject, k[2], bucket, str(user)))
    assert rows.keys() == expected.keys()
    assert set(result.uniques) == expected_uniques
    for k, seen in expected.items():
        row = rows[k]
        assert row.count == len(seen)
        if k[0] in ("m-count", "m-pings", "m-unique"):
            continue
        numbers = [n for _, n in seen]
        assert row.sum is not None and Fraction(row.sum) == sum(numbers)
        assert row.min is not None and Fraction(row.min) == min(numbers)
        assert row.max is not None and Fraction(row.max) == max(numbers)
        latest_time, latest_value = max(seen)
        assert row.latest_time == latest_time
        assert row.latest_value is not None and Fraction(row.latest_value) == latest_value

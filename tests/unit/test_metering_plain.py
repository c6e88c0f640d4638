"""``service.aggregate``'s plain way (integer values kept as ``int`` while folding, top-level
properties read without JSONPath) gives exactly what the general way gives: the same
deltas digit for digit (a Decimal's exponent too: ``5`` is not ``5.0``), the same unique
values, the same refusals with the same reasons, for any mix of values and meters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.usage import UsageEvent
from workers.metering import service
from workers.metering.service import MeterDef

TENANT = "acme"
BASE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

METERS = [
    MeterDef("m-sum", TENANT, "tokens", "call", "sum", "$.v", {"model": "$.model"}),
    MeterDef("m-two", TENANT, "two", "call", "max", "$.v", {"b": "$.region", "a": "$.model"}),
    MeterDef("m-count", TENANT, "calls", "call", "count", None, {"model": "$.model"}),
    MeterDef("m-min", TENANT, "low", "low", "min", "$.v", {}),
    MeterDef("m-latest", TENANT, "last", "low", "latest", "$.v", {"model": "$.model"}),
    MeterDef("m-nested", TENANT, "nested", "deep", "sum", "$.n.v", {"model": "$.model"}),
    MeterDef("m-unique", TENANT, "users", "deep", "unique_count", "$.user", {}),
    MeterDef("m-pings", TENANT, "pings", "ping", "count", None, {}),
]

values = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([10**15, -(10**15), 10**15 + 1, -(10**15) - 1, 0, 4000]),
    st.sampled_from(["5", "5.0", "-0.0", "0.000", "1.5", "1e3", "2.500", "1.0000000000001"]).map(
        Decimal
    ),
    st.sampled_from(["12", " 7 ", "n/a", True, False, None, [1], {"x": 1}]),
)
groups = st.sampled_from(["a", "b", "", None, 1, Decimal("1.0"), True, "x\u00e9"])
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=3))]
)
instants = st.integers(min_value=0, max_value=12).map(lambda k: BASE + timedelta(minutes=13 * k))


@st.composite
def events(draw: st.DrawFn) -> UsageEvent:
    data: dict[str, Any] = {}
    for name in ("model", "region"):
        if draw(st.integers(0, 4)):
            data[name] = draw(groups)
    if draw(st.integers(0, 9)):
        data["v"] = draw(values)
    if draw(st.booleans()):
        data["n"] = {"v": draw(values)} if draw(st.integers(0, 5)) else draw(values)
    if draw(st.integers(0, 5)):
        data["user"] = draw(st.sampled_from(["ann", "bob", 7, None]))
    # not validated: values out of range reach aggregate, which must refuse them alike
    return UsageEvent.model_construct(
        id=f"e{draw(st.integers(0, 10**9))}",
        source="test",
        type=draw(st.sampled_from(["call", "call", "call", "low", "deep", "ping", "none"])),
        subject=draw(st.sampled_from(["c1", "c2"])),
        time=draw(instants).astimezone(draw(offsets)),
        data=data,
        tenantid=TENANT,
    )


def exactly(result: service.Aggregated) -> tuple[Any, ...]:
    # repr: a Decimal's exponent and a time's offset count, not only their values
    return (
        [repr(d) for d in result.deltas],
        [repr(u) for u in result.uniques],
        result.rejected,
    )


@settings(max_examples=1500, deadline=None)
@given(st.lists(events(), max_size=40), st.lists(st.sampled_from(METERS), unique_by=lambda m: m.id))
def test_the_plain_way_gives_exactly_what_the_general_way_gives(
    stream: list[UsageEvent], meters: list[MeterDef]
) -> None:
    plain = service._aggregate(stream, meters, plain=True)
    general = service._aggregate(stream, meters, plain=False)
    assert exactly(plain) == exactly(general)


def test_integer_sums_become_decimals_of_the_same_digits() -> None:
    def call(v: Any, minute: int) -> UsageEvent:
        return UsageEvent(
            id=f"e{minute}",
            source="test",
            type="call",
            subject="c1",
            time=BASE + timedelta(minutes=minute),
            data={"v": v, "model": "a"},
            tenantid=TENANT,
        )

    result = service.aggregate(
        [call(10**15, 1), call(10**15, 2), call(Decimal("0.5"), 3), call(-3, 4)], METERS[:1]
    )
    (delta,) = result.deltas
    assert (delta.count, str(delta.sum), str(delta.min), str(delta.max)) == (
        4,
        "1999999999999997.5",
        "-3",
        "1000000000000000",
    )
    assert type(delta.min) is Decimal and type(delta.latest_value) is Decimal
    assert (delta.latest_time, delta.latest_value) == (BASE + timedelta(minutes=4), Decimal(-3))

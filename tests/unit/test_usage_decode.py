"""``decode_record``'s hand-written check (the metering worker's hot path) accepts only what
``UsageEvent.model_validate`` accepts, and builds the same values; everything else gets
pydantic's own answer. Differential: many records near every rule's edge."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import jsonexact
from schemas.usage import _REQUIRED, UsageEvent, UsageRecord, _plain_event, decode_record

BASE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "5b3c1e0e-8a2f-4b1a-9a55-8f0e3c2b1a00",
    "source": "bench/producer",
    "type": "llm.completion",
    "subject": "customer-17",
    "time": "2026-11-22T10:15:30.123Z",
    "datacontenttype": "application/json",
    "data": {"tokens": 1234, "model": "m2"},
    "tenantid": "bench",
}

TEXTS = [
    "",
    "a",
    "a" * 256,
    "a" * 257,
    "a" * 512,
    "a" * 513,
    "x\x00",
    "x\t",
    "x\n",
    "x\x7f",
    "x\x1f",
    "\ud800",
    "é",
    "llm.completion\n",
    "Llm:x/y-z_",
    "-x",
    ".x",
    "x y",
    "bench",
    "Bench",
    "b" * 63,
    "b" * 64,
    "9a-",
]
TIMES = [
    "2026-11-22T10:15:30Z",
    "2026-11-22T10:15:30.1Z",
    "2026-11-22T10:15:30.123456Z",
    "2026-11-22T10:15:30.1234567Z",
    "2026-11-22T10:15:30.Z",
    "2026-11-22 10:15:30Z",
    "2026-11-22t10:15:30z",
    "2026-11-22T10:15:30+05:30",
    "2026-11-22T10:15:30-00:00",
    "2026-11-22T10:15:30+23:59",
    "2026-11-22T10:15:30+24:00",
    "2026-11-22T10:15:30+05:99",
    "2026-11-22T10:15:30+0530",
    "2026-11-22T10:15:30+05",
    "2026-11-22T10:15:30",
    "2026-11-22T24:00:00Z",
    "2026-11-22T10:15:60Z",
    "2026-02-30T10:15:30Z",
    "2026-11-22",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:59:59+01:00",
    "1969-12-31T23:59:59.999999Z",
    "2099-12-31T23:59:59.999999Z",
    "2100-01-01T00:00:00Z",
    "2099-12-31T23:30:00-01:00",
    "9999-12-31T23:30:00-01:00",
    "\uff12\uff10\uff12\uff16-11-22T10:15:30Z",  # fullwidth digits
    "1700000000",
]
OTHERS: list[Any] = [None, 0, 1, 1.5, Decimal("1.5"), True, [], {}, ["a"], "1.0", "2.0"]
DATA: list[Any] = [
    {},
    {"tokens": 1},
    {"tokens": 10**15},
    {"tokens": 10**15 + 1},
    {"tokens": Decimal("1.123456789012")},
    {"tokens": Decimal("1.1234567890123")},
    {"tokens": "12.5"},
    {"tokens": "1e16"},
    {"tokens": "x\x00"},
    {"a\x00": 1},
    {"n": {"deep": [1, Decimal("2.5"), "3"]}},
    {"n": {"deep": [10**16]}},
    [],
    "x",
    None,
]

FIELDS = [*BASE, "correlationid", "causationid", "dataversion", "extra"]


def value_for(name: str) -> st.SearchStrategy[Any]:
    if name == "time":
        return st.sampled_from(TIMES + OTHERS)
    if name == "data":
        return st.sampled_from(DATA)
    return st.sampled_from(TEXTS + OTHERS) | st.text(max_size=8)


records = st.fixed_dictionaries(
    {},
    optional={name: st.deferred(lambda name=name: value_for(name)) for name in FIELDS},  # type: ignore[misc]
)


def mutated(draw: Any) -> dict[str, Any]:
    record = dict(BASE)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()) and name in record:
            del record[name]
        else:
            record[name] = draw(value_for(name))
    return record


mutations = st.composite(mutated)()


def same_as_pydantic(record: dict[str, Any]) -> None:
    raw = jsonexact.dumps(record)  # a str: it may hold a lone surrogate
    fast = _plain_event(raw)
    if "\ud800" not in raw:  # what a topic holds is UTF-8: bytes take the same path
        encoded = _plain_event(raw.encode())
        assert (fast is None) == (encoded is None) and fast == encoded
    try:
        reference = UsageEvent.model_validate(jsonexact.loads(raw))
    except ValidationError:
        assert fast is None, f"accepted what pydantic refuses: {record!r}"
        return
    if fast is None:
        return  # left to pydantic: allowed (it answers)
    assert fast == UsageRecord.of(reference)
    assert typed(fast.data) == typed(reference.data)  # 1 and Decimal(1) are equal: not the same
    assert fast.time.utcoffset() == reference.time.utcoffset()


def typed(value: Any) -> Any:
    """``value`` with the type of every number and text in it, to compare exactly."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value), value)


@settings(max_examples=3000, deadline=None)
@given(mutations)
def test_one_rule_at_a_time_near_its_edge(record: dict[str, Any]) -> None:
    same_as_pydantic(record)


@settings(max_examples=1000, deadline=None)
@given(records)
def test_any_mix_of_attributes(record: dict[str, Any]) -> None:
    same_as_pydantic(record)


@pytest.mark.parametrize("time", TIMES)
def test_every_time_spelling(time: str) -> None:
    same_as_pydantic({**BASE, "time": time})


def test_the_plain_record_takes_the_hand_written_path() -> None:
    assert _plain_event(jsonexact.dumps(BASE)) is not None
    assert _plain_event(jsonexact.dumps({k: v for k, v in BASE.items() if k != "data"})) is not None
    extra = {**BASE, "correlationid": "c-1", "dataversion": "2"}
    assert _plain_event(jsonexact.dumps(extra)) is not None
    assert set(_REQUIRED) == {n for n, f in UsageEvent.model_fields.items() if f.is_required()}


def test_decode_record_is_the_models_values_or_its_refusal() -> None:
    for record in (BASE, {**BASE, "time": "1700000000"}, {**BASE, "data": {"n": "1e2"}}):
        raw = json.dumps(record).encode()
        reference = UsageEvent.model_validate(jsonexact.loads(raw))
        assert decode_record(raw) == UsageRecord.of(reference)
    assert _plain_event(json.dumps({**BASE, "time": "1700000000"})) is None  # pydantic's
    raw = json.dumps({**BASE, "subject": "c\x00"}).encode()
    with pytest.raises(ValidationError) as fast:
        decode_record(raw)
    with pytest.raises(ValidationError) as reference:
        UsageEvent.model_validate(jsonexact.loads(raw))
    assert str(fast.value) == str(reference.value)


def test_the_copied_bounds_are_the_bounds() -> None:
    from schemas import bounds, usage

    # the numbers' bounds are bounds.plain_values' own; the character classes are copies
    assert usage._LINE_BAD.pattern == bounds._LINE_FORBIDDEN.pattern
    assert usage._TEXT_BAD.pattern == bounds._TEXT_FORBIDDEN.pattern


def test_a_text_once_refused_is_refused_again_and_once_accepted_accepted_again() -> None:
    for _ in range(2):
        assert _plain_event(jsonexact.dumps({**BASE, "subject": "x\x00"})) is None
        assert _plain_event(jsonexact.dumps({**BASE, "type": "-x"})) is None
        assert _plain_event(jsonexact.dumps({**BASE, "tenantid": "Bench"})) is None
        assert _plain_event(jsonexact.dumps({**BASE, "source": ""})) is None
        event = _plain_event(jsonexact.dumps({**BASE, "subject": "c-9", "source": "s-9"}))
        assert event is not None and (event.subject, event.source) == ("c-9", "s-9")

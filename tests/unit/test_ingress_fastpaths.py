"""The ingress hot path's shortcuts give exactly what the straightforward code gives."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import bounds, jsonexact
from schemas.usage import UsageEvent, UsageEventIn
from workers.ingress.deps import KeyCache

# what jsonexact.loads can return: str keys; ints, exact Decimals, no floats; within the
# bounds of usage data (schemas/bounds.py: |v| <= 10**15, 12 places, no control characters)
text = st.text(st.characters(blacklist_categories=("Cc", "Cs")))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**15), max_value=10**15)
    | st.decimals(allow_nan=False, allow_infinity=False).filter(
        lambda d: bounds.metered_problem(d) is None
    )
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
times = st.datetimes(
    # hypothesis wants naive bounds and adds the zones itself
    min_value=datetime(1970, 1, 2),  # noqa: DTZ001
    max_value=datetime(2099, 12, 31),  # noqa: DTZ001
    timezones=st.sampled_from(
        [
            UTC,
            timezone(timedelta(hours=5, minutes=30)),
            timezone(timedelta(hours=-8)),
            timezone(timedelta(minutes=1)),
        ]
    ),
)
events = st.builds(
    UsageEventIn,
    id=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40),
    source=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40),
    type=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:/\-]{0,20}\Z"),
    subject=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40),
    time=times,
    data=st.dictionaries(text.filter(lambda k: len(k) <= 10), json_values, max_size=5).filter(
        lambda d: bounds.usage_data_problem(d) is None  # e.g. a text that spells 1e30
    ),
)


def _encodable(e: UsageEventIn) -> bool:
    """Lone surrogates cannot be written as UTF-8 by either path."""
    try:
        UsageEvent.from_client(e, "acme").to_json()
        return True
    except UnicodeEncodeError:
        return False


@settings(max_examples=300, deadline=None)
@given(st.lists(events, min_size=1, max_size=5))
def test_encode_from_client_is_to_json_byte_for_byte(batch: list[UsageEventIn]) -> None:
    batch = [e for e in batch if _encodable(e)]
    expected = [UsageEvent.from_client(e, "acme").to_json() for e in batch]
    assert UsageEvent.encode_from_client(batch, "acme") == expected


def test_encode_from_client_after_parsing_a_request() -> None:
    body = (
        b'[{"id":"e1","source":"s","type":"llm.completion","subject":"c","time":'
        b'"2026-11-22T10:15:00.120Z","data":{"tokens":1.50,"n":1000000000000000,'
        b'"m":"\xc3\xbc","x":[1,-0.0,2E+3,{"k":null}],"b":true}}]'
    )
    parsed = [UsageEventIn.model_validate(raw) for raw in jsonexact.loads(body)]
    expected = [UsageEvent.from_client(e, "acme").to_json() for e in parsed]
    assert UsageEvent.encode_from_client(parsed, "acme") == expected
    assert b'"tokens":1.50' in expected[0]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_dumps_parsed_is_dumps(value: dict[str, Any]) -> None:
    assert jsonexact.dumps_parsed(value) == jsonexact.dumps(value)


def test_dumps_parsed_keeps_decimals_exact() -> None:
    assert jsonexact.dumps_parsed({"a": Decimal("0.10"), "b": [Decimal("-0")]}) == (
        '{"a":0.10,"b":[0]}'
    )


def test_key_cache_remembers_successes_for_its_ttl_only() -> None:
    cache = KeyCache(ttl_s=0.05)
    assert cache.get("bsk_a_secret") is None
    cache.put("bsk_a_secret", "acme")
    assert cache.get("bsk_a_secret") == "acme"
    assert cache.get("bsk_a_other") is None
    deadline = time.monotonic() + 2
    while cache.get("bsk_a_secret") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get("bsk_a_secret") is None


def test_key_cache_off_and_bounded() -> None:
    off = KeyCache(ttl_s=0)
    off.put("k", "acme")
    assert off.get("k") is None
    small = KeyCache(ttl_s=60, max_size=3)
    for i in range(10):
        small.put(f"k{i}", f"t{i}")
        assert small.get(f"k{i}") == f"t{i}"
    assert len(small._entries) <= 3

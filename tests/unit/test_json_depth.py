"""The door's JSON depth check (workers/ingress/door.py) agrees with the parsed nesting for
any JSON, whatever brackets, quotes and backslashes its strings and keys hold."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from workers.ingress.door import json_depth_exceeds

TRICKY = st.text(alphabet='[]{}"\\ab\n\x01', max_size=8)
JSON = st.recursive(
    st.none() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@given(JSON, st.integers(min_value=1, max_value=8), st.booleans())
def test_it_says_too_deep_exactly_when_the_nesting_is_deeper_than_the_limit(
    value: Any, limit: int, ascii_only: bool
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert json_depth_exceeds(body, limit) is (depth(value) > limit)


def test_a_thousand_levels_are_too_deep_and_the_limit_itself_is_not() -> None:
    assert json_depth_exceeds(b"[" * 1000 + b"]" * 1000, 64)
    assert not json_depth_exceeds(b'{"a":' * 63 + b"[]" + b"}" * 63, 64)
    assert json_depth_exceeds(b'{"a":' * 64 + b"[]" + b"}" * 64, 64)

"""``jsonexact.dumps_parsed`` with Decimals inside (the usage query's answers): the same text
as the recursive ``dumps``, whatever strings the data holds — even its own marker."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import jsonexact

MARK = "\x00jsonexact:decimal\x00"

# strings that look like (or hold) the marker the fast path writes in place of a Decimal
tricky = st.sampled_from(
    [MARK, f"x{MARK}", f"{MARK}x", f'"{MARK}', f'{MARK}"', f'x"{MARK}', "\x00", '"', "\\"]
)
strings = st.text() | tricky
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | strings
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=500, deadline=None)
@given(values)
def test_the_same_text_as_dumps(value: Any) -> None:
    assert jsonexact.dumps_parsed(value) == jsonexact.dumps(value)


def test_a_usage_answer_digit_for_digit() -> None:
    rows = [
        {
            "window_start": f"2026-10-01T{h:02d}:00:00+00:00",
            "subject": "acme",
            "group_by": {"model": "o3", "region": None},
            "value": Decimal(h) / 8 if h % 3 else Decimal(f"{h}.000"),
        }
        for h in range(24)
    ]
    text = jsonexact.dumps_parsed({"data": rows, "marker": MARK, "zero": Decimal("-0")})
    assert text == jsonexact.dumps({"data": rows, "marker": MARK, "zero": Decimal("-0")})
    assert '"value":0.000}' in text and '"value":0.125}' in text and '"value":21.000}' in text
    assert text.endswith(f',"marker":{json.dumps(MARK)},"zero":0}}')
    assert [r["value"] for r in jsonexact.loads(text)["data"]] == [r["value"] for r in rows]


def test_what_dumps_refuses_is_refused() -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        jsonexact.dumps_parsed({"v": [Decimal("1"), Decimal("NaN")]})
    with pytest.raises(TypeError):
        jsonexact.dumps_parsed({"v": [Decimal("1"), object()]})

"""``jsonexact.loads`` scans a document straight when nothing surrounds it: the same value,
or the same error, as ``JSONDecoder.decode`` for any text."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import jsonexact

_reference = json.JSONDecoder(parse_float=Decimal, parse_constant=jsonexact._no_constants).decode

pieces = st.sampled_from(
    [
        '{"a":1}',
        "[1.5,-0.0,1e400]",
        '"x"',
        "12",
        "null",
        "NaN",
        "Infinity",
        " ",
        "\n",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"\\ud800"',
        "x",
        "1 2",
        '{"a":1,"a":2}',
        "-",
        "0.1",
        "tru",
    ]
)
texts = st.lists(pieces, max_size=6).map("".join) | st.text(max_size=20)


def outcome(parse: Any, text: str | bytes) -> tuple[str, str]:
    try:
        return "value", repr(parse(text))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        return type(e).__name__, str(e)


@settings(max_examples=2000, deadline=None)
@given(texts)
def test_the_same_value_or_error_as_decode(text: str) -> None:
    expected = outcome(_reference, text)
    assert outcome(jsonexact.loads, text) == expected
    if not any("\ud800" <= c <= "\udfff" for c in text):  # bytes: UTF-8 text only
        assert outcome(jsonexact.loads, text.encode()) == expected

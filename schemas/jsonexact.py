"""JSON encoding that writes ``Decimal`` as an exact JSON number, digit for digit."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """JSON text of ``value``; Decimals become numbers written exactly (no exponent)."""
    if isinstance(value, dict):
        return "{" + ",".join(_dumps(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return _number(value)
    return _dumps(value)


def _number(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    text = format(value, "f")
    return text if text != "-0" else "0"


# what the C encoder writes in place of each Decimal, to be replaced by its digits after
_MARK = "\x00jsonexact:decimal\x00"
_MARK_JSON = _dumps(_MARK)


def dumps_parsed(value: Any) -> str:
    """``dumps(value)`` for data as ``loads`` returns it (every dict key a ``str``).

    One pass of the C encoder when no ``Decimal`` is inside (the common case: integers,
    strings). Otherwise one more pass of the C encoder with a marker string for each
    Decimal (in the order it meets them), the markers then replaced by the Decimals'
    digits: many times faster than the recursive path above on large answers. A string
    of the data that would be read as a marker (so the count of markers is off) sends
    the value down the recursive path. Same text every way.
    """
    try:
        return _dumps(value)
    except TypeError:  # a Decimal inside (or a type dumps refuses too)
        pass
    found: list[Decimal] = []

    def mark(o: Any) -> str:
        if isinstance(o, Decimal):
            found.append(o)
            return _MARK
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    encode = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=mark
    ).encode
    try:
        parts = encode(value).split(_MARK_JSON)
    except TypeError:  # a type neither encoder knows: let dumps say so
        return dumps(value)
    if len(parts) != len(found) + 1:  # a marker in the data itself
        return dumps(value)
    out = [parts[0]]
    for number, part in zip(found, parts[1:], strict=True):
        out.append(_number(number))
        out.append(part)
    return "".join(out)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


_decoder = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constants)
_decode = _decoder.decode
# the C scanner ``decode`` calls (set in JSONDecoder.__init__), without its whitespace steps
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def loads(text: str | bytes) -> Any:
    """Parse JSON with every non-integer number as an exact ``Decimal``; NaN/Infinity refused.

    A document with no whitespace around it (every record on a topic) is scanned straight;
    anything else (whitespace, an error to report) goes through ``decode``: same result."""
    s = text.decode() if isinstance(text, bytes) else text
    try:
        value, end = _scan(s, 0)
    except StopIteration:  # leading whitespace, or not JSON: decode says which
        return _decode(s)
    if end != len(s):  # trailing whitespace, or extra data
        return _decode(s)
    return value

"""JSON encoding that writes ``Decimal`` as an exact JSON number, digit for digit."""

from __future__ import annotations

import json
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
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        text = format(value, "f")
        return text if text != "-0" else "0"
    return _dumps(value)


def dumps_parsed(value: Any) -> str:
    """``dumps(value)`` for data as ``loads`` returns it (every dict key a ``str``).

    One pass of the C encoder when no ``Decimal`` is inside (the common case: integers,
    strings); otherwise the exact path above. Same text either way.
    """
    try:
        return _dumps(value)
    except TypeError:  # a Decimal inside (or a type dumps refuses too)
        return dumps(value)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


_decode = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constants).decode


def loads(text: str | bytes) -> Any:
    """Parse JSON with every non-integer number as an exact ``Decimal``; NaN/Infinity refused."""
    return _decode(text.decode() if isinstance(text, bytes) else text)

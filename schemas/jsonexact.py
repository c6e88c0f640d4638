"""JSON encoding that writes ``Decimal`` as an exact JSON number (never via float)."""

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


def loads(text: str | bytes) -> Any:
    """Parse JSON with every non-integer number as an exact ``Decimal``; NaN/Infinity refused."""
    return json.loads(text, parse_float=Decimal, parse_constant=_no_constants)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")

"""A small, strict JSONPath subset for meters: ``$.a.b``, ``$['a b']``, ``$.items[0]``.

Compiled once per meter; evaluation is a walk over dict keys and list indexes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<name>[A-Za-z_$][A-Za-z0-9_$\-]*)      # .name
      | \[(?P<index>-?\d+)\]                         # [0]
      | \[(?P<q>['"])(?P<quoted>(?:(?!(?P=q)).)*)(?P=q)\]   # ['name'] or ["name"]
    """,
    re.VERBOSE,
)


class JsonPathError(ValueError):
    pass


MISSING: Any = object()


@lru_cache(maxsize=4096)
def compile_path(path: str) -> tuple[str | int, ...]:
    """Parse ``path`` into steps; raise JsonPathError naming the position that is wrong."""
    if not path.startswith("$"):
        raise JsonPathError("a JSONPath starts with '$'")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise JsonPathError(f"unsupported JSONPath syntax at position {pos}: {path[pos:]!r}")
        if match.group("name") is not None:
            steps.append(match.group("name"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            steps.append(match.group("quoted"))
        pos = match.end()
    if not steps:
        raise JsonPathError("the JSONPath selects the whole event data; name a property")
    return tuple(steps)


def evaluate(steps: tuple[str | int, ...], data: Any) -> Any:
    """The value at ``steps`` in ``data``, or ``MISSING``."""
    value = data
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return MISSING
            value = value[step]
        else:
            if not isinstance(value, dict) or step not in value:
                return MISSING
            value = value[step]
    return value

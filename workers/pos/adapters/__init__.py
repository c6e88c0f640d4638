"""POS source formats. One module per format in this package, each with:

- ``NAME``: the ``{source}`` of ``POST /v1/integrations/pos/{source}/transactions``
  (``^[a-z0-9][a-z0-9_-]{0,31}$``);
- ``parse(payload) -> list[PosReceipt]``: the decoded JSON body to normalised receipts
  (money to integer minor units, exactly), raising ``AdapterError`` naming each bad field.

Modules are discovered by name: adding a format is adding a module (see ``generic.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from schemas.pos import POS_SOURCE_PATTERN, PosReceipt


@dataclass(frozen=True)
class Adapter:
    name: str
    parse: Callable[[Any], list[PosReceipt]]
    description: str


@cache
def adapters() -> dict[str, Adapter]:
    found: dict[str, Adapter] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        parse = getattr(module, "parse", None)
        if not isinstance(name, str) or not callable(parse):
            raise RuntimeError(f"POS adapter {module.__name__} needs NAME and parse()")
        if not re.fullmatch(POS_SOURCE_PATTERN, name):
            raise RuntimeError(f"POS adapter name {name!r} must match {POS_SOURCE_PATTERN}")
        if name in found:
            raise RuntimeError(f"two POS adapters are named {name!r}")
        doc = (module.__doc__ or "").strip().splitlines()
        found[name] = Adapter(name, parse, doc[0] if doc else name)
    return found


def get(name: str) -> Adapter | None:
    return adapters().get(name)

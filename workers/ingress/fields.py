"""Field types of the ingress's own request models and parameters: the same bounds as the
commands they become (schemas/bounds.py), so what the door accepts always builds one."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from schemas.bounds import LINE_PATTERN, EventTime, Line, PositiveMinorUnits

#: no C0 control character and no DEL (path and query parameters, single-line text)
NO_CONTROL_CHARACTERS = LINE_PATTERN

#: one line of text: no control characters (PostgreSQL cannot store NUL)
Text = Line

#: an aware date-time whose UTC form is in [1970-01-01T00:00:00Z, 2100-01-01T00:00:00Z)
Instant = EventTime


def _json_integer(value: Any) -> Any:
    """A JSON number, never ``true``/``false`` or a string (pydantic's lax mode takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


#: an integer as JSON Schema means it: a number with no fraction (2 or 2.0), not a bool
JsonInt = Annotated[int, BeforeValidator(_json_integer)]

#: seconds of a secret's overlap: a JSON integer in [0, 30 days] (the bounds come before
#: the validator, so that OpenAPI shows them as ``minimum``/``maximum``)
OverlapSeconds = Annotated[int, Field(ge=0, le=30 * 86400), BeforeValidator(_json_integer)]

#: a positive amount in minor units, at most 10**15, a JSON integer
Amount = Annotated[PositiveMinorUnits, BeforeValidator(_json_integer)]

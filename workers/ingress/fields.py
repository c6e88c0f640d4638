"""Field types of the ingress's own request models and parameters: the same bounds as the
commands they become (schemas/bounds.py), so what the door accepts always builds one."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from schemas.bounds import LINE_PATTERN, EventTime, Line, PositiveMinorUnits, json_integer

#: no C0 control character and no DEL (path and query parameters, single-line text)
NO_CONTROL_CHARACTERS = LINE_PATTERN

#: one line of text: no control characters (PostgreSQL cannot store NUL)
Text = Line

#: an aware date-time whose UTC form is in [1970-01-01T00:00:00Z, 2100-01-01T00:00:00Z)
Instant = EventTime


#: an integer as JSON Schema means it: a number with no fraction (2 or 2.0), not a bool
JsonInt = Annotated[int, BeforeValidator(json_integer)]

#: seconds of a secret's overlap: a JSON integer in [0, 30 days] (the bounds come before
#: the validator, so that OpenAPI shows them as ``minimum``/``maximum``)
OverlapSeconds = Annotated[int, Field(ge=0, le=30 * 86400), BeforeValidator(json_integer)]

#: a positive amount in minor units, at most 10**15, a JSON integer
Amount = Annotated[PositiveMinorUnits, BeforeValidator(json_integer)]

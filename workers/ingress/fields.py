"""Field types of the ingress's own request models and parameters: the same bounds as the
commands they become (schemas/bounds.py), so what the door accepts always builds one."""

from __future__ import annotations

from typing import Annotated

from pydantic import Strict

from schemas.bounds import LINE_PATTERN, EventTime, Line, PositiveMinorUnits

#: no C0 control character and no DEL (path and query parameters, single-line text)
NO_CONTROL_CHARACTERS = LINE_PATTERN

#: one line of text: no control characters (PostgreSQL cannot store NUL)
Text = Line

#: an aware date-time whose UTC form is in [1970-01-01T00:00:00Z, 2100-01-01T00:00:00Z)
Instant = EventTime

#: a positive amount in minor units, at most 10**15; a JSON integer (not a bool or a string)
Amount = Annotated[PositiveMinorUnits, Strict()]

"""Field types of the ingress's own request models and parameters: bounded at the door."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

#: no C0 control character and no DEL (PostgreSQL cannot store NUL; none belongs in text)
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

Text = Annotated[str, StringConstraints(pattern=NO_CONTROL_CHARACTERS)]


def _utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9999-01-01T00:00:00Z") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 9999-01-01T00:00:00Z")
    return value


#: an aware date-time from 1970 to 9998 (UTC): converting it to UTC cannot overflow
Instant = Annotated[
    AwareDatetime,
    AfterValidator(_utc),
    Field(description="RFC 3339 with an offset, from 1970-01-01 to 9998-12-31 (UTC)."),
]

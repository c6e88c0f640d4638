from __future__ import annotations

from typing import Any

from workers.runtime.errors import BillstreamError, PermanentError


class PosError(BillstreamError):
    code = "pos_error"


class NoMapping(PosError, PermanentError):
    code = "no_pos_mapping"


class UnmappedLocation(PosError, PermanentError):
    code = "unmapped_location"


class AdapterError(PosError):
    """A POS payload an adapter cannot read; ``errors`` name each field and why."""

    code = "invalid_pos_payload"

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors

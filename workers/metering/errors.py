from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError, RetryableError


class MeteringError(BillstreamError):
    code = "metering_error"


class MeteringRetryableError(MeteringError, RetryableError):
    pass


class MeterConflict(MeteringError, PermanentError):
    code = "meter_conflict"


class UnusableEvent(MeteringError, PermanentError):
    """A usage event no meter can use: no meter reads its type, or a value is missing/invalid."""

    code = "unusable_event"

"""Usage metering: meters, per-hour aggregation, queries.

The face: what other packages may import from metering. A meter and a subject's period of
it are how invoicing and alerts ask storage for usage totals."""

from workers.metering.service import MeterDef, PeriodKey, UsageRow, WindowSize

__all__ = ["MeterDef", "PeriodKey", "UsageRow", "WindowSize"]

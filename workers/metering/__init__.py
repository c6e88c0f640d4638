"""Usage metering: meters, per-hour aggregation, queries."""

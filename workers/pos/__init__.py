"""Point-of-sale integration: adapters that read POS formats, and the consumer (run by the
metering worker) that turns receipts into usage events by each tenant's mapping."""

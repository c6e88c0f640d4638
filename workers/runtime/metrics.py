"""Prometheus metrics every worker exposes (text format on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter(
    "billstream_messages_consumed_total", "Records read from Kafka", ["group", "topic"]
)
MESSAGES_PROCESSED = Counter(
    "billstream_messages_processed_total", "Records applied (first time)", ["group", "topic"]
)
MESSAGES_DEDUPLICATED = Counter(
    "billstream_messages_deduplicated_total",
    "Records dropped as already applied",
    ["group", "topic"],
)
MESSAGES_DEAD_LETTERED = Counter(
    "billstream_messages_dead_lettered_total", "Records sent to the DLQ", ["group", "topic"]
)
BATCH_SECONDS = Histogram(
    "billstream_batch_seconds",
    "Time to apply one batch, commit included",
    ["group", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSIENT_RETRIES = Counter(
    "billstream_transient_retries_total",
    "Batch attempts retried after a transient error",
    ["group"],
)
OUTBOX_PUBLISHED = Counter("billstream_outbox_published_total", "Outbox rows published")
OUTBOX_BACKLOG = Gauge("billstream_outbox_backlog", "Outbox rows waiting to be published")
OUTBOX_OLDEST_AGE = Gauge(
    "billstream_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row"
)

# --- operations and integrations ---------------------------------------------------------
WEBHOOK_DELIVERIES = Counter(
    "billstream_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (e.g. succeeded, failed, retrying, dead)",
    ["outcome"],
)
CONSUMER_LAG = Gauge(
    "billstream_consumer_lag",
    "Records a consumer group has yet to read (end offset minus committed offset)",
    ["group", "topic", "partition"],
)
CONSUMER_COMMITTED_OFFSET = Gauge(
    "billstream_consumer_committed_offset",
    "The consumer group's committed offset (-1: none yet)",
    ["group", "topic", "partition"],
)
TOPIC_END_OFFSET = Gauge(
    "billstream_topic_end_offset",
    "The partition's end offset (high watermark)",
    ["topic", "partition"],
)

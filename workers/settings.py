"""The one Settings class. Every knob is an environment variable prefixed ``BILLSTREAM_``."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLSTREAM_", extra="ignore")

    # --- connections -------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_idempotence: bool = Field(
        default=True,
        description="Idempotent producer; on for Apache Kafka, off for the embedded broker.",
    )
    kafka_request_timeout_ms: int = 10_000
    kafka_session_timeout_ms: int = Field(
        default=10_000, description="Consumer group session; the embedded broker joins in ~half."
    )
    kafka_heartbeat_interval_ms: int = 3_000
    database_url: str = "postgresql+asyncpg://billstream:billstream@127.0.0.1:5432/billstream"
    database_pool_size: int = 10

    # --- topics ------------------------------------------------------------------
    topic_partitions: int = 6
    topic_replication: int = 1

    # --- consumer runtime --------------------------------------------------------
    batch_max_records: int = 5_000
    batch_timeout_ms: int = 100
    kafka_fetch_max_wait_ms: int = Field(
        default=100,
        description="Longest a fetch waits for data. Apache Kafka answers as soon as data "
        "arrives; the embedded broker always waits this long, so it bounds freshness there.",
    )
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0
    inbox_retention_days: int = Field(default=35, ge=32)
    outbox_poll_interval_s: float = 0.2
    outbox_batch: int = 2_000
    graceful_timeout_s: float = 15.0

    # --- ingress -----------------------------------------------------------------
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8080
    max_request_bytes: int = 1_048_576
    max_batch_events: int = 1_000
    idempotency_retention_hours: int = Field(
        default=24, ge=1, description="How long an Idempotency-Key is remembered."
    )
    rate_limit_events_per_s: float = Field(
        default=50_000, description="Per tenant and ingress process; 0 disables."
    )
    api_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long an ingress process trusts an API key it has verified "
        "(a revoked key keeps working that long there); 0 checks the database every request.",
    )

    # --- worker process ----------------------------------------------------------
    metrics_port: int = Field(default=0, description="Worker health/metrics port; 0 = off.")

    # --- logging -----------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- dev stack ---------------------------------------------------------------
    state_dir: Path = Path(".billstream")

    # --- invoicing ---------------------------------------------------------------
    invoicing_tick_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the invoicing scheduler looks for ended periods, due drafts "
        "and requested billing runs.",
    )
    invoicing_chunk: int = Field(
        default=1000, ge=1, le=10_000, description="Subscriptions or drafts per transaction."
    )
    late_usage_lookback_days: int = Field(
        default=35,
        ge=0,
        description="Late usage of periods that ended up to this long ago is billed as "
        "adjustment lines on the next invoice.",
    )

    @property
    def late_usage_lookback(self) -> timedelta:
        return timedelta(days=self.late_usage_lookback_days)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

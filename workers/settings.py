"""The one Settings class. Every knob is an environment variable prefixed ``BILLSTREAM_``."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    # larger batches amortise each transaction and coalesce usage.totals_changed (one per
    # subject, meter and hour per batch); under light load batches stay small (the timeout)
    batch_max_records: int = 10_000
    batch_timeout_ms: int = 100
    kafka_fetch_max_wait_ms: int = Field(
        default=100,
        description="Longest a fetch waits for data. Apache Kafka answers as soon as data "
        "arrives; the embedded broker always waits this long, so it bounds freshness there.",
    )
    kafka_consumer_timeout_ms: int = Field(
        default=200,
        ge=10,
        description="Longest an idle consumer's background fetcher sleeps before it looks at "
        "its partitions again (aiokafka's consumer_timeout_ms); arriving data and every "
        "fetch answer wake it sooner. Higher: an idle worker wakes less often.",
    )
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0
    inbox_retention_days: int = Field(default=35, ge=32)
    outbox_poll_interval_s: float = 0.2
    outbox_batch: int = 2_000
    # rows of another worker waiting longer than this (it stopped) are published by this one
    outbox_adopt_after_s: float = Field(default=60.0, gt=0)
    graceful_timeout_s: float = 15.0

    # --- ingress -----------------------------------------------------------------
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8080
    ingress_instance: str = ""  # echoed by /readyz: `billstream dev` knows its own ingress
    max_request_bytes: int = Field(
        default=1_048_576,
        ge=1,
        description="Largest request body on every endpoint (413 past it, before parsing).",
    )
    max_json_depth: int = Field(
        default=64,
        ge=2,
        le=500,
        description="Deepest nesting of JSON arrays and objects in a request body (400 past "
        "it, before parsing).",
    )
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
        "and requested billing runs, and the credit job for expiring grants, ended "
        "commitments and automatic top-ups.",
    )
    invoicing_chunk: int = Field(
        default=1000, ge=1, le=10_000, description="Subscriptions or drafts per transaction."
    )
    invoicing_parallel: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Chunks a billing run closes or finalizes at once in one worker (each its "
        "own transaction, rows claimed with SKIP LOCKED): one computes while PostgreSQL "
        "writes the other.",
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

    # --- webhooks ----------------------------------------------------------------
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="A delivery succeeds on a 2xx within this many seconds."
    )
    webhook_retry_schedule_s: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Delays after each failed attempt (the first is immediate); its length "
        "is the number of retries. JSON list, e.g. [5, 300, 1800].",
    )
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1, description="±20 % by default.")
    webhook_disable_after_s: float = Field(
        default=5 * 86400,
        gt=0,
        description="An endpoint failing continuously this long is disabled.",
    )
    webhook_secret_overlap_s: float = Field(
        default=86400,
        ge=0,
        description="How long the previous secret still signs after a rotation.",
    )
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs webhooks may reach although private/loopback (development, tests), "
        "comma-separated, e.g. 127.0.0.0/8,::1/128. Empty in production.",
    )
    webhook_concurrency: int = Field(default=256, ge=1, description="Deliveries in flight.")
    webhook_claim_batch: int = Field(default=500, ge=1)
    webhook_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often due retries are looked for (new events wake "
        "the dispatcher at once).",
    )

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, v: object) -> object:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return v

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _valid_networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not a network (CIDR, e.g. 127.0.0.0/8)") from None
        return v

    # --- operations --------------------------------------------------------------
    replay_rate_per_s: float = Field(
        default=1_000,
        ge=0,
        description="Default cap of `billstream replay --into` (records per second); 0: none.",
    )
    dlq_max_redrives: int = Field(
        default=3,
        ge=1,
        description="A record redriven this many times is not redriven again without --force.",
    )

    # --- alerts --------------------------------------------------------------------
    alerts_tick_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the alerts worker raises overdue-invoice alerts, checks credit "
        "balances and resolves alerts whose period ended or whose invoice was settled.",
    )

    # --- payments ------------------------------------------------------------------
    secrets_key: SecretStr | None = Field(
        default=None,
        description=(
            "Fernet key(s) (urlsafe base64, 32 bytes) encrypting Stripe secrets at rest; "
            "comma-separated, newest first, to rotate (old keys still decrypt)."
        ),
    )
    stripe_api_base: str | None = Field(
        default=None, description="Stripe API base URL override (localstripe in dev and tests)."
    )
    payments_tick_s: float = Field(
        default=1.0, gt=0, description="How often the collector looks for due payments."
    )
    payments_claim_batch: int = Field(default=50, ge=1)
    payments_attempt_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="A claimed attempt not settled after this long is reconciled and resumed.",
    )
    dunning_schedule_days: Annotated[list[float], NoDecode] = Field(
        default=[3.0, 5.0, 7.0],
        description="Retries after a failed collection, in days after the failure.",
    )

    # --- entitlements --------------------------------------------------------------
    entitlements_tick_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the entitlements worker ends graces, restores hard limits of "
        "ended periods, expires grants and rotates the token signing key when it is due.",
    )
    entitlements_issuer: str = Field(
        default="billstream",
        min_length=1,
        description="The 'iss' claim of entitlement tokens (gateways check it).",
    )
    entitlements_key_rotation_days: float = Field(
        default=30.0,
        gt=0,
        description="The token signing key is replaced after this long; retired keys stay "
        "in /.well-known/jwks.json for a day (the longest a token lives).",
    )

    # --- documents and pages ---------------------------------------------------------
    public_url: str = Field(
        default="",
        pattern=r"^(https?://[^\s/]+(/[^\s]*)?)?$",
        description="The ingress as customers reach it (https://billing.example.com): hosted "
        "invoice links and portal sessions start with it. Empty: "
        "http://BILLSTREAM_INGRESS_HOST:BILLSTREAM_INGRESS_PORT.",
    )
    stripe_js_url: str = Field(
        default="https://js.stripe.com/v3/",
        description="Stripe.js, loaded by the hosted invoice page and the portal to collect "
        "a card (billstream dev points it at its localstripe).",
    )

    @property
    def public_base_url(self) -> str:
        """``public_url`` without a trailing slash, or the ingress's own address."""
        return (self.public_url or f"http://{self.ingress_host}:{self.ingress_port}").rstrip("/")

    @field_validator("dunning_schedule_days", mode="before")
    @classmethod
    def _days_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [float(x) for x in v.split(",") if x.strip()]
        return v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

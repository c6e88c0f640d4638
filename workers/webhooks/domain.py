"""The webhooks domain types: endpoints, messages (one per event and endpoint), attempts,
the retry policy and what an attempt produced. Plain frozen dataclasses, shared by the
service (which computes them), the dispatcher and ``storage/webhooks`` (which stores them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- endpoints -----------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointDef:
    tenant_id: str
    id: str
    url: str
    description: str
    event_types: list[str]
    rate_limit_per_s: int | None
    ordered: bool
    format: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class EndpointSecrets:
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None

    def __repr__(self) -> str:
        return "EndpointSecrets(<redacted>)"


@dataclass(frozen=True)
class EndpointFilter:
    tenant_id: str
    id: str
    event_types: list[str]
    format: str = "standard"  # which body its messages carry


# --- messages and attempts -----------------------------------------------------------


@dataclass(frozen=True)
class EventRef:
    """What fan-out needs of an event: its identity, type, subject and the exact bytes."""

    tenant_id: str
    id: str
    source: str
    type: str
    subject: str | None
    payload: bytes


@dataclass(frozen=True)
class NewMessage:
    tenant_id: str
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    payload: bytes
    next_attempt_at: datetime


@dataclass(frozen=True)
class Claimed:
    """A leased message with what delivering it needs."""

    tenant_id: str
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    payload: bytes
    attempts: int
    cycle_attempts: int
    lease_token: str
    url: str
    secrets: EndpointSecrets
    rate_limit_per_s: int | None
    failing_since: datetime | None


@dataclass(frozen=True)
class MessageUpdate:
    """The state a message moves to after an attempt (or a rate-limit deferral)."""

    tenant_id: str
    id: str
    lease_token: str
    status: str
    counted: bool  # an attempt was made (False: deferred by the rate limit)
    cycle_attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_response_status: int | None
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptRow:
    tenant_id: str
    endpoint_id: str
    message_id: str
    attempted_at: datetime
    status: str
    response_status: int | None
    response_body: str | None
    latency_ms: int
    error: str | None


# --- retries and outcomes ------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.2
    disable_after: timedelta = timedelta(days=5)
    max_retry_after: timedelta = timedelta(hours=24)  # a longer Retry-After is capped

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.schedule)


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt produced."""

    attempted_at: datetime
    latency_ms: int
    status_code: int | None = None
    body: str | None = None  # the first 2 KiB, decoded leniently
    error: str | None = None  # no response: timeout, connection refused, unsafe address
    retry_after: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    result: AttemptResult
    update: MessageUpdate
    attempt: AttemptRow
    finally_failed: bool
    gone: bool  # 410: the endpoint is to be disabled


@dataclass
class Health:
    """What a batch of outcomes says about its endpoints."""

    recovered: list[tuple[str, str]] = field(default_factory=list)  # succeeded last
    # failing since (key -> (time, overwrite)): overwrite when a success in this batch
    # ended the previous streak, else only set when the endpoint was not failing yet
    failing: dict[tuple[str, str], tuple[datetime, bool]] = field(default_factory=dict)
    to_disable: list[tuple[str, str]] = field(default_factory=list)  # failing too long
    gone: list[tuple[str, str]] = field(default_factory=list)

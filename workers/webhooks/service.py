"""Webhooks domain logic. Pure: no I/O, no Kafka, no SQL, no clock of its own (``now`` and
the random source are passed in); unit-tested directly."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from schemas.envelope import CloudEvent
from schemas.webhooks import (
    CreateEndpoint,
    DisabledReason,
    EndpointCreated,
    EndpointDeleted,
    EndpointDeletedData,
    EndpointDisabled,
    EndpointDisabledData,
    EndpointEnabled,
    EndpointEnabledData,
    EndpointUpdated,
    MessageFailed,
    MessageFailedData,
    SecretRotated,
    SecretRotatedData,
    UpdateEndpointData,
)
from workers.webhooks import slack
from workers.webhooks.domain import (
    AttemptResult,
    AttemptRow,
    Claimed,
    EndpointDef,
    EndpointFilter,
    EventRef,
    Health,
    MessageUpdate,
    NewMessage,
    Outcome,
    RetryPolicy,
)
from workers.webhooks.errors import EndpointConflict
from workers.webhooks.views import endpoint_data

SOURCE = "billstream/webhooks"
MAX_RESPONSE_BODY = 2048  # bytes of a response body kept with each attempt
MAX_ERROR_LENGTH = 1000

# --- matching and fan-out ------------------------------------------------------------


def matches(filters: Sequence[str], event_type: str) -> bool:
    """Does an endpoint with these filters want ``event_type``? ``*`` is every type,
    ``invoice.*`` every type that starts with ``invoice.``, anything else is exact."""
    for f in filters:
        if f == "*" or f == event_type:
            return True
        if f.endswith(".*") and event_type.startswith(f[:-1]):
            return True
    return False


def message_id(endpoint_id: str, source: str, event_id: str) -> str:
    """The stable ``webhook-id`` of one event delivered to one endpoint: redelivering the
    event can never create a second, different message, and two events never share one.

    Parts without U+001F (every real event) are joined by it, the id every version has
    given, so a message keeps its id across an upgrade; a part containing it is
    length-prefixed under another BLAKE2b personalisation instead (joining was ambiguous:
    source ``a␟b`` + id ``c`` and source ``a`` + id ``b␟c`` were one message)."""
    joined = f"{endpoint_id}\x1f{source}\x1f{event_id}"
    if joined.count("\x1f") == 2:
        digest = hashlib.blake2b(joined.encode(), digest_size=16).digest()
    else:
        h = hashlib.blake2b(digest_size=16, person=b"billstream-webhk")
        for part in (endpoint_id, source, event_id):
            raw = part.encode()
            h.update(len(raw).to_bytes(4, "big"))
            h.update(raw)
        digest = h.digest()
    return "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()


def is_about_webhooks(event_type: str) -> bool:
    return event_type.startswith("webhook.")


def body(endpoint_format: str, payload: bytes) -> bytes:
    """What a message to an endpoint of ``endpoint_format`` carries: the event's bytes
    unchanged (``standard``, and any format this version does not know), or a Slack
    message rendered from them (``slack``)."""
    if endpoint_format == "slack":
        return slack.render(payload)
    return payload


T = TypeVar("T")


def wanted(
    items: Sequence[T], endpoints: Sequence[EndpointFilter], key: Callable[[T], tuple[str, str]]
) -> list[T]:
    """The items whose (tenant, event type) some enabled endpoint's filter matches."""
    filters: dict[str, list[list[str]]] = {}
    for ep in endpoints:
        filters.setdefault(ep.tenant_id, []).append(ep.event_types)
    memo: dict[tuple[str, str], bool] = {}
    out: list[T] = []
    for item in items:
        k = key(item)
        if k not in memo:
            memo[k] = any(matches(f, k[1]) for f in filters.get(k[0], ()))
        if memo[k]:
            out.append(item)
    return out


def fan_out(
    events: Sequence[EventRef], endpoints: Sequence[EndpointFilter], now: datetime
) -> list[NewMessage]:
    """One message per (event, enabled endpoint of its tenant whose filter matches), due
    ``now``, in event order, carrying the body of the endpoint's format (rendered once per
    event and format). Loop guard: an endpoint never receives the webhook events about
    itself (``webhook.*`` with its id as subject)."""
    by_tenant: dict[str, list[EndpointFilter]] = {}
    for ep in endpoints:
        by_tenant.setdefault(ep.tenant_id, []).append(ep)
    out: list[NewMessage] = []
    for event in events:
        bodies: dict[str, bytes] = {}
        for ep in by_tenant.get(event.tenant_id, ()):
            if not matches(ep.event_types, event.type):
                continue
            if is_about_webhooks(event.type) and event.subject == ep.id:
                continue
            if ep.format not in bodies:
                bodies[ep.format] = body(ep.format, event.payload)
            out.append(
                NewMessage(
                    tenant_id=event.tenant_id,
                    id=message_id(ep.id, event.source, event.id),
                    endpoint_id=ep.id,
                    event_id=event.id,
                    event_type=event.type,
                    payload=bodies[ep.format],
                    next_attempt_at=now,
                )
            )
    return out


# --- retries -------------------------------------------------------------------------


def retry_delay(policy: RetryPolicy, failures: int, rng: random.Random) -> timedelta | None:
    """The wait after the ``failures``-th failed attempt of a schedule (1-based), ±jitter;
    None when that was the last attempt."""
    if failures < 1 or failures > len(policy.schedule):
        return None
    base = policy.schedule[failures - 1]
    factor = 1 + rng.uniform(-policy.jitter, policy.jitter) if policy.jitter else 1.0
    return timedelta(seconds=base * factor)


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` as delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def describe_failure(result: AttemptResult) -> str:
    if result.error is not None:
        return result.error
    if result.status_code is not None and 300 <= result.status_code < 400:
        return f"HTTP {result.status_code}: redirects are not followed"
    return f"HTTP {result.status_code}"


def outcome(
    claimed: Claimed, result: AttemptResult, policy: RetryPolicy, rng: random.Random
) -> Outcome:
    """The message's next state after ``result``: succeeded; pending with the next attempt
    per the schedule (jittered, and never before a 429/503's ``Retry-After``); or failed."""
    cycle = claimed.cycle_attempts + 1
    at = result.attempted_at
    next_at: datetime | None = None
    finished: datetime | None = None
    if result.succeeded:
        status = "succeeded"
        finished = at
    else:
        delay = retry_delay(policy, cycle, rng)
        if delay is not None and result.status_code in (429, 503):
            wanted = parse_retry_after(result.retry_after, at)
            if wanted is not None:
                delay = max(delay, min(wanted, policy.max_retry_after))
        if delay is None:
            status, finished = "failed", at
        else:
            status, next_at = "pending", at + delay
    update = MessageUpdate(
        tenant_id=claimed.tenant_id,
        id=claimed.id,
        lease_token=claimed.lease_token,
        status=status,
        counted=True,
        cycle_attempts=cycle,
        next_attempt_at=next_at,
        last_attempt_at=at,
        last_response_status=result.status_code,
        finished_at=finished,
    )
    attempt = AttemptRow(
        tenant_id=claimed.tenant_id,
        endpoint_id=claimed.endpoint_id,
        message_id=claimed.id,
        attempted_at=at,
        status="succeeded" if result.succeeded else "failed",
        response_status=result.status_code,
        response_body=result.body,
        latency_ms=result.latency_ms,
        error=None if result.succeeded else describe_failure(result)[:MAX_ERROR_LENGTH],
    )
    return Outcome(
        claimed,
        result,
        update,
        attempt,
        finally_failed=status == "failed",
        gone=result.status_code == 410,
    )


def deferred(claimed: Claimed, until: datetime) -> MessageUpdate:
    """The message goes back, untried, until ``until`` (the endpoint's rate limit)."""
    return MessageUpdate(
        tenant_id=claimed.tenant_id,
        id=claimed.id,
        lease_token=claimed.lease_token,
        status="pending",
        counted=False,
        cycle_attempts=claimed.cycle_attempts,
        next_attempt_at=until,
        last_attempt_at=None,
        last_response_status=None,
        finished_at=None,
    )


def health(outcomes: Sequence[Outcome], policy: RetryPolicy, now: datetime) -> Health:
    """Per endpoint, the latest attempt decides: a success makes it healthy; a failure
    makes it failing since its first failure after the last success, and disabled once
    that is ``disable_after`` ago. A 410 disables it at once."""
    out = Health()
    latest: dict[tuple[str, str], Outcome] = {}
    first_failure: dict[tuple[str, str], datetime] = {}
    succeeded: set[tuple[str, str]] = set()
    for o in sorted(outcomes, key=lambda o: o.result.attempted_at):
        key = (o.claimed.tenant_id, o.claimed.endpoint_id)
        latest[key] = o
        if o.result.succeeded:
            first_failure.pop(key, None)
            succeeded.add(key)
        else:
            first_failure.setdefault(key, o.result.attempted_at)
        if o.gone and key not in out.gone:
            out.gone.append(key)
    for key, o in latest.items():
        if o.result.succeeded:
            out.recovered.append(key)
            continue
        if key in succeeded:
            since, overwrite = first_failure[key], True
        else:
            since, overwrite = o.claimed.failing_since or first_failure[key], False
        out.failing[key] = (since, overwrite)
        if now - since >= policy.disable_after:
            out.to_disable.append(key)
    return out


# --- endpoints -----------------------------------------------------------------------


def new_endpoint(command: CreateEndpoint) -> EndpointDef:
    d = command.data
    return EndpointDef(
        tenant_id=command.tenantid,
        id=d.endpoint_id,
        url=d.url,
        description=d.description,
        event_types=list(d.event_types),
        rate_limit_per_s=d.rate_limit_per_s,
        ordered=d.ordered,
        format=d.format,
        enabled=d.enabled,
        disabled_reason=None if d.enabled else "manual",
        failing_since=None,
        created_at=None,
        updated_at=None,
    )


def _definition(e: EndpointDef) -> tuple[Any, ...]:
    return (e.url, e.description, e.event_types, e.rate_limit_per_s, e.ordered, e.format)


def ensure_same_definition(existing: EndpointDef, wanted: EndpointDef) -> None:
    """A create redelivered under a new command id is a no-op; reusing an endpoint id for
    another definition is refused."""
    if _definition(existing) != _definition(wanted):
        raise EndpointConflict(
            f"endpoint {wanted.id} already exists with a different definition; "
            "change it with PATCH",
            field="endpoint_id",
        )


def changes(patch: UpdateEndpointData) -> dict[str, Any]:
    """Column -> new value for the fields a PATCH sets (``rate_limit_per_s: 0`` removes the
    limit; enabling clears the disabled reason and the failure streak)."""
    out: dict[str, Any] = {}
    for name in ("url", "description", "event_types", "ordered", "format"):
        value = getattr(patch, name)
        if value is not None:
            out[name] = list(value) if isinstance(value, list) else value
    if patch.rate_limit_per_s is not None:
        out["rate_limit_per_s"] = patch.rate_limit_per_s or None
    if patch.enabled is True:
        out.update(enabled=True, disabled_reason=None, failing_since=None)
    elif patch.enabled is False:
        out.update(enabled=False, disabled_reason="manual")
    return out


def endpoint_created(command: CloudEvent, e: EndpointDef) -> EndpointCreated:
    return EndpointCreated(source=SOURCE, subject=e.id, data=endpoint_data(e), **command.caused())


def update_events(command: CloudEvent, before: EndpointDef, after: EndpointDef) -> list[CloudEvent]:
    """``endpoint_updated`` when the definition changed; ``endpoint_enabled`` /
    ``endpoint_disabled`` when the enabled flag flipped."""
    out: list[CloudEvent] = []
    if _definition(before) != _definition(after):
        out.append(
            EndpointUpdated(
                source=SOURCE, subject=after.id, data=endpoint_data(after), **command.caused()
            )
        )
    if before.enabled != after.enabled:
        if after.enabled:
            out.append(
                EndpointEnabled(
                    source=SOURCE,
                    subject=after.id,
                    data=EndpointEnabledData(endpoint_id=after.id),
                    **command.caused(),
                )
            )
        else:
            out.append(endpoint_disabled(after.tenant_id, after.id, "manual", None, cause=command))
    return out


def endpoint_disabled(
    tenant_id: str,
    endpoint_id: str,
    reason: DisabledReason,
    failing_since: datetime | None,
    *,
    cause: CloudEvent | None = None,
) -> EndpointDisabled:
    envelope: dict[str, Any] = cause.caused() if cause is not None else {"tenantid": tenant_id}
    return EndpointDisabled(
        source=SOURCE,
        subject=endpoint_id,
        data=EndpointDisabledData(
            endpoint_id=endpoint_id, reason=reason, failing_since=failing_since
        ),
        **envelope,
    )


def endpoint_deleted(command: CloudEvent, endpoint_id: str) -> EndpointDeleted:
    return EndpointDeleted(
        source=SOURCE,
        subject=endpoint_id,
        data=EndpointDeletedData(endpoint_id=endpoint_id),
        **command.caused(),
    )


def secret_rotated(command: CloudEvent, endpoint_id: str, expires_at: datetime) -> SecretRotated:
    return SecretRotated(
        source=SOURCE,
        subject=endpoint_id,
        data=SecretRotatedData(endpoint_id=endpoint_id, previous_secret_expires_at=expires_at),
        **command.caused(),
    )


def message_failed(o: Outcome) -> MessageFailed | None:
    """``webhook.message_failed`` for a message whose schedule is exhausted — except when
    the message itself carried a ``webhook.*`` event: failing to deliver a notification
    about webhooks does not produce another one (no loops between failing endpoints)."""
    c = o.claimed
    if is_about_webhooks(c.event_type):
        return None
    return MessageFailed(
        source=SOURCE,
        subject=c.endpoint_id,
        tenantid=c.tenant_id,
        causationid=c.event_id,
        data=MessageFailedData(
            endpoint_id=c.endpoint_id,
            message_id=c.id,
            event_id=c.event_id,
            event_type=c.event_type,
            attempts=c.attempts + 1,
            last_response_status=o.result.status_code,
            last_error=o.attempt.error,
        ),
    )

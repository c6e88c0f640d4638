"""Webhook domain logic: matching, fan-out, stable ids, the retry schedule, Retry-After,
endpoint health, rate limits. Pure functions with an injected clock and random source."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from schemas.webhooks import MESSAGE_ID_PATTERN, UpdateEndpointData, new_endpoint_id
from workers.webhooks import service
from workers.webhooks.domain import (
    AttemptResult,
    Claimed,
    EndpointFilter,
    EndpointSecrets,
    EventRef,
    RetryPolicy,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def test_filters_match_exact_types_prefix_wildcards_and_everything() -> None:
    assert service.matches(["invoice.finalized"], "invoice.finalized")
    assert not service.matches(["invoice.finalized"], "invoice.voided")
    assert service.matches(["invoice.*"], "invoice.voided")
    assert service.matches(["invoice.*"], "invoice.line.added")
    assert not service.matches(["invoice.*"], "invoices.voided")
    assert not service.matches(["invoice.*"], "invoice")
    assert service.matches(["meter.created", "*"], "anything.at.all")
    assert not service.matches([], "invoice.finalized")


def test_message_ids_are_stable_per_endpoint_and_event() -> None:
    a, b = new_endpoint_id(), new_endpoint_id()
    first = service.message_id(a, "src", "evt-1")
    assert first == service.message_id(a, "src", "evt-1")  # a redelivery: the same message
    assert (
        len(
            {
                first,
                service.message_id(b, "src", "evt-1"),
                service.message_id(a, "src", "evt-2"),
                service.message_id(a, "other", "evt-1"),
            }
        )
        == 4
    )
    import re

    assert re.fullmatch(MESSAGE_ID_PATTERN, first)


def _event(
    tenant: str, id: str, type: str = "invoice.finalized", subject: str | None = None
) -> EventRef:
    return EventRef(tenant, id, "src", type, subject, b"{}")


def test_fan_out_one_message_per_matching_endpoint_of_the_events_tenant() -> None:
    eps = [
        EndpointFilter("acme", "ep_a", ["invoice.*"]),
        EndpointFilter("acme", "ep_b", ["meter.created"]),
        EndpointFilter("globex", "ep_c", ["*"]),
    ]
    events = [_event("acme", "1"), _event("acme", "2", "meter.created"), _event("globex", "3")]
    out = service.fan_out(events, eps, T0)
    assert [(m.event_id, m.endpoint_id) for m in out] == [
        ("1", "ep_a"),
        ("2", "ep_b"),
        ("3", "ep_c"),
    ]
    assert all(m.next_attempt_at == T0 for m in out)
    assert service.fan_out([_event("initech", "4")], eps, T0) == []


def test_an_endpoint_never_receives_webhook_events_about_itself() -> None:
    eps = [EndpointFilter("acme", "ep_a", ["*"]), EndpointFilter("acme", "ep_b", ["webhook.*"])]
    disabled_a = _event("acme", "9", "webhook.endpoint_disabled", subject="ep_a")
    assert [m.endpoint_id for m in service.fan_out([disabled_a], eps, T0)] == ["ep_b"]


def test_the_retry_schedule_with_jitter() -> None:
    rng = random.Random(3)
    delays = [service.retry_delay(POLICY, n, rng) for n in range(1, 9)]
    assert delays[-1] is None  # 8 attempts in all: the 8th failure is final
    bases = [5, 300, 1800, 7200, 18000, 36000, 36000]
    for base, d in zip(bases, delays, strict=False):
        assert d is not None
        assert base * 0.8 <= d.total_seconds() <= base * 1.2
    spread = {service.retry_delay(POLICY, 1, rng) for _ in range(50)}
    assert len(spread) > 40  # jittered, not a constant
    exact = RetryPolicy(schedule=(1, 2), jitter=0)
    assert [service.retry_delay(exact, n, rng) for n in (1, 2, 3)] == [
        timedelta(seconds=1),
        timedelta(seconds=2),
        None,
    ]


def _claimed(
    cycle: int = 0,
    attempts: int = 0,
    failing_since: datetime | None = None,
    endpoint: str = "ep_a",
    event_type: str = "invoice.finalized",
) -> Claimed:
    return Claimed(
        tenant_id="acme",
        id="msg_1",
        endpoint_id=endpoint,
        event_id="evt-1",
        event_type=event_type,
        payload=b"{}",
        attempts=attempts,
        cycle_attempts=cycle,
        lease_token="tok",
        url="https://example.com",
        secrets=EndpointSecrets("whsec_x", None, None),
        rate_limit_per_s=None,
        failing_since=failing_since,
    )


def _result(status: int | None, at: datetime = T0, **kw: object) -> AttemptResult:
    return AttemptResult(attempted_at=at, latency_ms=12, status_code=status, **kw)  # type: ignore[arg-type]


def test_outcomes_success_retry_and_final_failure() -> None:
    rng = random.Random(1)
    ok = service.outcome(_claimed(), _result(204), POLICY, rng)
    assert (ok.update.status, ok.update.finished_at, ok.attempt.error) == ("succeeded", T0, None)
    retry = service.outcome(_claimed(), _result(500), POLICY, rng)
    assert retry.update.status == "pending" and retry.update.next_attempt_at is not None
    assert timedelta(seconds=4) <= retry.update.next_attempt_at - T0 <= timedelta(seconds=6)
    assert retry.attempt.error == "HTTP 500"
    last = service.outcome(_claimed(cycle=7, attempts=7), _result(None, error="boom"), POLICY, rng)
    assert (last.update.status, last.finally_failed, last.update.next_attempt_at) == (
        "failed",
        True,
        None,
    )
    failed = service.message_failed(last)
    assert failed is not None and failed.data.attempts == 8 and failed.data.last_error == "boom"
    redirect = service.outcome(_claimed(), _result(301), POLICY, rng)
    assert redirect.update.status == "pending"
    assert redirect.attempt.error == "HTTP 301: redirects are not followed"
    gone = service.outcome(_claimed(), _result(410), POLICY, rng)
    assert gone.gone and gone.update.status == "pending"


def test_retry_after_is_honoured_on_429_and_503_and_capped() -> None:
    rng = random.Random(1)
    o = service.outcome(_claimed(), _result(429, retry_after="120"), POLICY, rng)
    assert o.update.next_attempt_at == T0 + timedelta(seconds=120)
    date = "Sun, 22 Nov 2026 11:00:00 GMT"  # an HTTP date, one hour after T0
    o = service.outcome(_claimed(), _result(503, retry_after=date), POLICY, rng)
    assert o.update.next_attempt_at == T0 + timedelta(hours=1)
    o = service.outcome(_claimed(), _result(429, retry_after="9999999"), POLICY, rng)
    assert o.update.next_attempt_at == T0 + timedelta(hours=24)
    o = service.outcome(_claimed(), _result(500, retry_after="120"), POLICY, rng)  # not 429/503
    assert o.update.next_attempt_at is not None
    assert o.update.next_attempt_at - T0 < timedelta(seconds=7)
    shorter = service.outcome(_claimed(cycle=2), _result(429, retry_after="1"), POLICY, rng)
    assert shorter.update.next_attempt_at is not None  # the schedule (30 min) wins
    assert shorter.update.next_attempt_at - T0 >= timedelta(minutes=24)
    assert service.parse_retry_after("soon", T0) is None
    assert service.parse_retry_after(None, T0) is None


def test_endpoint_health_failing_streaks_recovery_and_disabling() -> None:
    rng = random.Random(1)
    policy = RetryPolicy(disable_after=timedelta(days=5))
    fail = service.outcome(_claimed(), _result(500, T0), policy, rng)
    h = service.health([fail], policy, T0)
    assert h.failing == {("acme", "ep_a"): (T0, False)} and h.to_disable == []
    later = T0 + timedelta(days=5)
    still = service.outcome(_claimed(failing_since=T0), _result(500, later), policy, rng)
    h = service.health([still], policy, later)
    assert h.to_disable == [("acme", "ep_a")]
    ok = service.outcome(_claimed(failing_since=T0), _result(200, later), policy, rng)
    h = service.health([still, ok], policy, later)
    assert h.recovered == [("acme", "ep_a")] and h.failing == {}
    after = later + timedelta(seconds=1)
    again = service.outcome(_claimed(failing_since=T0), _result(500, after), policy, rng)
    h = service.health([ok, again], policy, after)
    assert h.failing == {("acme", "ep_a"): (after, True)} and h.to_disable == []
    gone = service.outcome(_claimed(), _result(410), policy, rng)
    assert service.health([gone], policy, T0).gone == [("acme", "ep_a")]


def test_webhook_events_failing_to_deliver_make_no_message_failed_event() -> None:
    last = service.outcome(
        _claimed(cycle=7, event_type="webhook.endpoint_disabled"),
        _result(500),
        POLICY,
        random.Random(1),
    )
    assert last.finally_failed and service.message_failed(last) is None


def test_patch_changes() -> None:
    ep = new_endpoint_id()
    assert service.changes(UpdateEndpointData(endpoint_id=ep, rate_limit_per_s=0)) == {
        "rate_limit_per_s": None
    }
    assert service.changes(UpdateEndpointData(endpoint_id=ep, enabled=True)) == {
        "enabled": True,
        "disabled_reason": None,
        "failing_since": None,
    }
    assert service.changes(
        UpdateEndpointData(endpoint_id=ep, enabled=False, url="https://x.io")
    ) == {
        "url": "https://x.io",
        "enabled": False,
        "disabled_reason": "manual",
    }


def test_only_events_some_endpoint_wants_are_kept() -> None:
    endpoints = [
        EndpointFilter("acme", "ep_a", ["invoice.*"]),
        EndpointFilter("acme", "ep_b", ["alert.raised"]),
        EndpointFilter("other", "ep_c", ["*"]),
    ]
    items = [
        ("acme", "invoice.paid"),
        ("acme", "usage.totals_changed"),
        ("acme", "alert.raised"),
        ("acme", "alert.resolved"),
        ("other", "usage.totals_changed"),
        ("nobody", "invoice.paid"),
    ]
    assert service.wanted(items, endpoints, lambda i: i) == [
        ("acme", "invoice.paid"),
        ("acme", "alert.raised"),
        ("other", "usage.totals_changed"),
    ]

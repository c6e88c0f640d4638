"""The one rate limiter: per endpoint in webhooks (cost 1), per tenant at the ingress."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.runtime.ratelimit import TokenBuckets, retry_after


def test_an_endpoint_spends_its_tokens_and_is_told_how_long_to_wait() -> None:
    limiter: TokenBuckets[tuple[str, str]] = TokenBuckets()
    key = ("acme", "ep_a")
    assert [limiter.take(key, 1, 2, 100.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take(key, 1, 2, 100.0) == 0.5
    assert limiter.take(key, 1, 2, 100.5) == 0.0
    assert limiter.take(key, 1, None, 100.5) == 0.0  # no rate: never limited


def test_tenants_have_buckets_of_their_own() -> None:
    limiter: TokenBuckets[str] = TokenBuckets()
    assert limiter.take("acme", 100, 100, 0.0) == 0.0
    assert limiter.take("acme", 50, 100, 0.0) == 0.5  # acme spent its burst
    assert limiter.take("globex", 100, 100, 0.0) == 0.0  # globex did not


def test_a_batch_larger_than_the_burst_is_told_to_wait_not_let_through() -> None:
    limiter: TokenBuckets[str] = TokenBuckets()
    assert limiter.take("acme", 500, 100, 0.0) > 0


@given(
    costs=st.lists(st.integers(1, 50), min_size=1, max_size=60),
    rate=st.integers(1, 100),
    step=st.floats(0, 0.5),
)
def test_what_is_let_through_never_exceeds_the_burst_plus_the_rate(
    costs: list[int], rate: int, step: float
) -> None:
    limiter: TokenBuckets[str] = TokenBuckets()
    now, allowed = 0.0, 0
    for cost in costs:
        if limiter.take("acme", cost, rate, now) == 0:
            allowed += cost
        now += step
    assert allowed <= rate + rate * now


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert [retry_after(0.001), retry_after(1.0), retry_after(1.2)] == ["1", "1", "2"]

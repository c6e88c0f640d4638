"""Token buckets, the one rate limiter: per tenant at the ingress, per endpoint in webhooks."""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TokenBuckets(Generic[K]):
    """One bucket per key (per process): ``rate`` tokens a second, bursts up to
    ``rate * burst_s``. A key's rate may change between calls (an endpoint's setting)."""

    def __init__(self, burst_s: float = 1.0) -> None:
        self.burst_s = burst_s
        self._buckets: dict[K, tuple[float, float]] = {}

    def take(self, key: K, cost: float, rate: float | None, now_s: float | None = None) -> float:
        """Spend ``cost`` tokens and return 0 when allowed (no rate: always), else the
        seconds until it would be (never 0: a refusal always says to wait)."""
        if not rate or rate <= 0:
            return 0.0
        now = time.monotonic() if now_s is None else now_s
        capacity = rate * self.burst_s
        tokens, last = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if cost <= tokens:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return max(0.001, (min(cost, capacity) - tokens) / rate)


def retry_after(seconds: float) -> str:
    """An HTTP ``Retry-After`` value (whole seconds, at least 1) for a wait of ``seconds``."""
    return str(max(1, math.ceil(seconds)))

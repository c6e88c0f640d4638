"""Per-tenant token buckets (per ingress process)."""

from __future__ import annotations

import math
import time


class RateLimiter:
    def __init__(self, rate_per_s: float, burst_s: float = 1.0) -> None:
        self.rate = rate_per_s
        self.capacity = rate_per_s * burst_s
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, tenant_id: str, cost: int) -> float:
        """Spend ``cost`` tokens; return 0 when allowed, else seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(tenant_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if cost > tokens:
            self._buckets[tenant_id] = (tokens, now)
            return max(0.001, (min(cost, self.capacity) - tokens) / self.rate)
        self._buckets[tenant_id] = (tokens - cost, now)
        return 0.0


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))

"""The alerts worker process."""

from __future__ import annotations

from workers.alerts import handlers
from workers.alerts.service import Clock, utc_now
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings, clock: Clock = utc_now) -> Worker:
    """The worker; ``clock`` is for tests."""
    return build_worker(
        "alerts", settings, lambda runtime: handlers.register(runtime, settings, clock)
    )

"""The payments worker process."""

from __future__ import annotations

from workers.payments import handlers
from workers.payments.service import Clock, utcnow
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings, clock: Clock = utcnow) -> Worker:
    return build_worker(
        "payments", settings, lambda runtime: handlers.register(runtime, settings, clock)
    )

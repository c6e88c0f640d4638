"""The alerts worker process."""

from __future__ import annotations

from workers.alerts import handlers
from workers.runtime import Runtime
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings, clock: handlers.Clock = handlers.utc_now) -> Worker:
    def register(runtime: Runtime) -> None:
        handlers.register(runtime, clock)
        sweeper = handlers.Sweeper(runtime, settings, clock)
        runtime.job("alerts.sweep", sweeper.tick, every_s=sweeper.interval_s)

    return build_worker("alerts", settings, register)

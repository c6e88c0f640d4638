"""The metering worker process."""

from __future__ import annotations

from workers.metering import handlers
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings) -> Worker:
    return build_worker("metering", settings, handlers.register)

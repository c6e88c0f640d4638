"""The metering worker process."""

from __future__ import annotations

from workers.metering import handlers
from workers.pos import handlers as pos_handlers
from workers.runtime import Runtime
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def register(runtime: Runtime) -> None:
    handlers.register(runtime)
    pos_handlers.register(runtime)  # POS receipts become usage events (workers/pos/)


def build(settings: Settings) -> Worker:
    return build_worker("metering", settings, register)

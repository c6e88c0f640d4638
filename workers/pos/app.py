"""The POS worker process: receipts become usage events, mappings are stored."""

from __future__ import annotations

from workers.pos import handlers
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings) -> Worker:
    return build_worker("pos", settings, handlers.register)

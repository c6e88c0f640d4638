"""The documents worker process."""

from __future__ import annotations

from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings) -> Worker:
    return build_worker("documents", settings, lambda runtime: None)

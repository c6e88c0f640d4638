"""The partners worker process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from workers.partners import handlers
from workers.partners.commands import Context, utc_now
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings, clock: Callable[[], datetime] = utc_now) -> Worker:
    """``clock``: when a month has ended, for statements (tests move it)."""
    ctx = Context(clock=clock)
    return build_worker("partners", settings, lambda runtime: handlers.register(runtime, ctx))

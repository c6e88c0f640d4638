"""Which consumers the workers run: built from the workers themselves (not started), so
``billstream lag`` and the AsyncAPI documents follow whatever each worker registers."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from workers.runtime.app import Worker
from workers.settings import Settings


@dataclass(frozen=True)
class ConsumerInfo:
    worker: str
    group: str
    topic: str
    description: str | None = None


def build_worker(name: str, settings: Settings) -> Worker:
    """``workers/<name>/app.py``'s ``build(settings)``: brokers and engines are created but
    nothing connects until the worker starts."""
    module = importlib.import_module(f"workers.{name}.app")
    worker: Worker = module.build(settings)
    return worker


async def consumers(settings: Settings, names: Sequence[str]) -> list[ConsumerInfo]:
    out: list[ConsumerInfo] = []
    for name in names:
        worker = build_worker(name, settings)
        try:
            for processor in worker.runtime.processors:
                c = processor.consumer
                out += [ConsumerInfo(name, c.group, t, c.handler.__doc__) for t in c.topics]
        finally:
            await worker.engine.dispose()
    return out

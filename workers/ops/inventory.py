"""Which consumers the workers run: built from the workers themselves (not started), so
``billstream lag`` and the AsyncAPI documents follow whatever each worker registers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workers import processes
from workers.settings import Settings


@dataclass(frozen=True)
class ConsumerInfo:
    worker: str
    group: str
    topic: str
    description: str | None = None


async def consumers(settings: Settings, names: Sequence[str]) -> list[ConsumerInfo]:
    out: list[ConsumerInfo] = []
    for name in names:
        worker = processes.build(name, settings)
        try:
            for processor in worker.runtime.processors:
                c = processor.consumer
                out += [ConsumerInfo(name, c.group, t, c.handler.__doc__) for t in c.topics]
        finally:
            await worker.engine.dispose()
    return out

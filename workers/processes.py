"""The worker processes billstream runs, by name: the one module that knows every context's
``app.py`` (the CLI's ``worker`` and ``dev``, ``lag`` and the AsyncAPI export ask it).
A context is loaded only when its worker is built."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI asks for WORKERS before any worker runs: --help stays quick
    from workers.runtime.app import Worker
    from workers.settings import Settings

WORKERS = (
    "metering",
    "pos",
    "invoicing",
    "payments",
    "webhooks",
    "alerts",
    "receipts",
    "entitlements",
    "documents",
    "partners",
)


def build(name: str, settings: Settings) -> Worker:
    """``workers/<name>/app.py``'s ``build(settings)``: brokers and engines are created, but
    nothing connects until the worker starts."""
    if name not in WORKERS:
        raise ValueError(f"unknown worker {name!r}; choose one of {', '.join(WORKERS)}")
    worker: Worker = app_module(name).build(settings)
    return worker


def app_module(name: str) -> ModuleType:
    """``workers/<name>/app.py``, imported now: only that one (a worker process loads its own
    context, not all ten: about a second of CPU each at start-up)."""
    import importlib

    if name not in WORKERS:
        raise ValueError(f"unknown worker {name!r}; choose one of {', '.join(WORKERS)}")
    return importlib.import_module(f"workers.{name}.app")

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
    worker: Worker = _apps()[name].build(settings)
    return worker


def _apps() -> dict[str, ModuleType]:
    from workers.alerts import app as alerts
    from workers.documents import app as documents
    from workers.entitlements import app as entitlements
    from workers.invoicing import app as invoicing
    from workers.metering import app as metering
    from workers.partners import app as partners
    from workers.payments import app as payments
    from workers.pos import app as pos
    from workers.receipts import app as receipts
    from workers.webhooks import app as webhooks

    return {
        "metering": metering,
        "pos": pos,
        "invoicing": invoicing,
        "payments": payments,
        "webhooks": webhooks,
        "alerts": alerts,
        "receipts": receipts,
        "entitlements": entitlements,
        "documents": documents,
        "partners": partners,
    }

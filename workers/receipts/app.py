"""The receipts worker process."""

from __future__ import annotations

from workers.payments import encrypt_secret
from workers.receipts import handlers
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings) -> Worker:
    """Refuses to start without ``BILLSTREAM_SECRETS_KEY``: signing keys are stored
    encrypted under it (it can be built without, for its AsyncAPI document)."""
    return build_worker(
        "receipts",
        settings,
        lambda runtime: handlers.register(runtime, settings),
        preflight=lambda: _check_secrets_key(settings),
    )


def _check_secrets_key(settings: Settings) -> None:
    encrypt_secret(settings, "")  # raises SecretsKeyMissing, naming the setting

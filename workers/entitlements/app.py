"""The entitlements worker process."""

from __future__ import annotations

from workers.entitlements import handlers
from workers.entitlements.jobs import Clock, utc_now
from workers.payments import encrypt_secret
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings


def build(settings: Settings, clock: Clock = utc_now) -> Worker:
    """Refuses to start without ``BILLSTREAM_SECRETS_KEY``: token signing keys are stored
    encrypted under it (it can be built without, for its AsyncAPI document). ``clock``:
    for tests."""
    return build_worker(
        "entitlements",
        settings,
        lambda runtime: handlers.register(runtime, settings, clock),
        preflight=lambda: _check_secrets_key(settings),
    )


def _check_secrets_key(settings: Settings) -> None:
    encrypt_secret(settings, "")  # raises SecretsKeyMissing, naming the setting

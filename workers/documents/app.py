"""The documents worker process."""

from __future__ import annotations

from workers.documents import handlers, service
from workers.documents.errors import SecretsKeyMissing
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings

#: invoicing events per batch: every finalized invoice of a batch is rendered (~50 ms each)
#: and held in memory until the batch's transaction stores them all
BATCH_MAX_RECORDS = 64


def build(settings: Settings) -> Worker:
    """Refuses to start without ``BILLSTREAM_SECRETS_KEY``: the hosted-page link printed on
    each invoice is signed with keys derived from it (it can be built without, for its
    AsyncAPI document)."""
    settings = settings.model_copy(
        update={"batch_max_records": min(settings.batch_max_records, BATCH_MAX_RECORDS)}
    )
    secret = settings.secrets_key.get_secret_value() if settings.secrets_key else None
    try:
        keys = service.signing_keys(secret)
    except SecretsKeyMissing:
        keys = []
    return build_worker(
        "documents",
        settings,
        lambda runtime: handlers.register(runtime, settings.public_base_url, keys),
        preflight=lambda: _check_secrets_key(secret),
    )


def _check_secrets_key(secret: str | None) -> None:
    service.signing_keys(secret)  # raises SecretsKeyMissing, naming the setting

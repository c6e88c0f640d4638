"""Ops audit events: written to PostgreSQL and published (``acks=all``) *before* the work
they describe, so nothing is replayed or redriven unaudited (docs/adr/0020)."""

from __future__ import annotations

import getpass
import socket

from schemas import topics
from schemas.ops import OpsRedriven, OpsReplayed
from storage.ops import OpsRepository
from workers.ops import kafka
from workers.ops.errors import OpsError, database_failed
from workers.runtime.database import database
from workers.runtime.publisher import Record
from workers.settings import Settings

SOURCE = "billstream/cli"


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def hostname() -> str:
    return socket.gethostname()[:256]


async def record(settings: Settings, event: OpsReplayed | OpsRedriven) -> None:
    """Keep ``event`` in ``ops_audit`` and publish it to ``billstream.events.ops.v1``.

    Raises ``OpsError`` when either fails: the caller must not go on."""
    try:
        async with (
            database(settings, pool_size=1) as jobs,
            jobs.transaction("ops.audit") as tx,
        ):
            await tx.repo(OpsRepository).audit(
                event.id,
                event.type,
                event.data.actor,
                event.data.reason,
                event.model_dump(mode="json", exclude_none=True),
            )
    except Exception as e:
        if not database_failed(e):
            raise
        raise OpsError(
            f"could not write the audit record to PostgreSQL ({type(e).__name__}: {e}); "
            "nothing was done",
            option="BILLSTREAM_DATABASE_URL",
        ) from None
    record = Record(
        topics.EVENTS_OPS, event.tenantid.encode(), event.to_json(), {"ce_type": event.type}
    )
    async with kafka.publisher(settings) as p:
        try:
            await p.publish([record])
        except Exception as e:
            raise OpsError(
                f"could not publish the audit event to {topics.EVENTS_OPS} "
                f"({type(e).__name__}: {e}); nothing was done"
            ) from None

"""Ops audit events: written to PostgreSQL and published (``acks=all``) *before* the work
they describe, so nothing is replayed or redriven unaudited (docs/adr/0020)."""

from __future__ import annotations

import getpass
import socket

from schemas import topics
from schemas.ops import OpsRedriven, OpsReplayed
from storage.db import DatabaseError, create_engine, session_factory
from storage.ops import OpsRepository
from workers.ops import kafka
from workers.ops.errors import OpsError
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
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await OpsRepository(session).audit(
                event.id,
                event.type,
                event.data.actor,
                event.data.reason,
                event.model_dump(mode="json", exclude_none=True),
            )
    except (DatabaseError, OSError) as e:
        raise OpsError(
            f"could not write the audit record to PostgreSQL ({type(e).__name__}: {e}); "
            "nothing was done",
            option="BILLSTREAM_DATABASE_URL",
        ) from None
    finally:
        await engine.dispose()
    async with kafka.producer(settings) as p:
        try:
            await p.send_and_wait(
                topics.EVENTS_OPS,
                event.to_json(),
                key=event.tenantid.encode(),
                headers=[("ce_type", event.type.encode())],
            )
        except Exception as e:
            raise OpsError(
                f"could not publish the audit event to {topics.EVENTS_OPS} "
                f"({type(e).__name__}: {e}); nothing was done"
            ) from None

"""Whether the dependencies a command needs answer, checked before it starts: a dead
PostgreSQL or broker is one ``error:`` line within ``CONNECT_TIMEOUT_S``, not a traceback
after the drivers' own (long) connect timeouts and retries."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from workers.ops.errors import OpsError
from workers.settings import Settings

CONNECT_TIMEOUT_S = 3.0


def database_address(url: str) -> tuple[str, int | str]:
    """(host, port), or ("unix", socket path) for ``?host=/dir`` URLs (libpq's spelling)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    port = parts.port or int(query.get("port", ["5432"])[0])
    host = unquote(parts.hostname or "") or query.get("host", [""])[0]
    if not host or host.startswith("/"):
        return "unix", str(Path(host or "/var/run/postgresql") / f".s.PGSQL.{port}")
    return host, port


def broker_addresses(bootstrap: str) -> list[tuple[str, int]]:
    found = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        found.append((host.strip("[]") or "127.0.0.1", int(port or 9092)))
    return found


async def _open(host: str, port: int | str, timeout_s: float) -> None:
    if host == "unix":
        opening = asyncio.open_unix_connection(str(port))
    else:
        opening = asyncio.open_connection(host, int(port))
    _, writer = await asyncio.wait_for(opening, timeout_s)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer"
    return getattr(e, "strerror", None) or type(e).__name__


async def database(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    host, port = database_address(settings.database_url)
    try:
        await _open(host, port, timeout_s)
    except (OSError, TimeoutError) as e:
        where = f"{port}" if host == "unix" else f"{host}:{port}"
        raise OpsError(
            f"cannot reach PostgreSQL at {where} ({_why(e)})", option="BILLSTREAM_DATABASE_URL"
        ) from None


async def broker(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """At least one bootstrap address answers (as the Kafka client needs)."""
    whys = []
    for host, port in broker_addresses(settings.kafka_bootstrap):
        try:
            await _open(host, port, timeout_s)
            return
        except (OSError, TimeoutError) as e:
            whys.append(_why(e))
    raise OpsError(
        f"cannot reach Kafka at {settings.kafka_bootstrap} ({'; '.join(whys)})",
        option="BILLSTREAM_KAFKA_BOOTSTRAP",
    )


async def require(settings: Settings, *, database_: bool = False, broker_: bool = False) -> None:
    if database_:
        await database(settings)
    if broker_:
        await broker(settings)

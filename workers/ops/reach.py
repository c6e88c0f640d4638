"""Whether the dependencies a command needs answer, checked before it starts: a dead
PostgreSQL or broker is one ``error:`` line within ``CONNECT_TIMEOUT_S``, not a traceback
after the drivers' own (long) connect timeouts and retries.

A port that accepts a connection is not yet a PostgreSQL or a broker (a stopped server
behind a proxy, another program, a wrong port): each check also asks the first question
of the protocol and waits, as long, for an answer of that protocol."""

from __future__ import annotations

import asyncio
import contextlib
import struct
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


# PostgreSQL's SSLRequest: any server answers one byte, b"S" or b"N", before anything else
PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# Kafka's ApiVersions v0 (api key 18), correlation id 1, client id "billstream-reach"
_CLIENT = b"billstream-reach"
KAFKA_API_VERSIONS = struct.pack("!ihhih", 10 + len(_CLIENT), 18, 0, 1, len(_CLIENT)) + _CLIENT


class NotThatServer(Exception):
    """Something answered, not in the protocol we asked in."""


async def _ask(host: str, port: int | str, question: bytes, answer: int, timeout_s: float) -> bytes:
    """Connect, send ``question``, read ``answer`` bytes, all within ``timeout_s``."""

    async def exchange() -> bytes:
        if host == "unix":
            reader, writer = await asyncio.open_unix_connection(str(port))
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(question)
            await writer.drain()
            return await reader.readexactly(answer)
        except asyncio.IncompleteReadError:
            raise NotThatServer("closed the connection") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), timeout_s)


async def _postgres(host: str, port: int | str, timeout_s: float) -> None:
    if await _ask(host, port, PG_SSL_REQUEST, 1, timeout_s) not in (b"S", b"N"):
        raise NotThatServer("not PostgreSQL")


async def _kafka(host: str, port: int, timeout_s: float) -> None:
    head = await _ask(host, port, KAFKA_API_VERSIONS, 8, timeout_s)
    size, correlation = struct.unpack("!ii", head)
    if correlation != 1 or not 0 < size < 1 << 20:
        raise NotThatServer("not a Kafka broker")


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer"
    if isinstance(e, NotThatServer):
        return f"it answered, {e}"
    return getattr(e, "strerror", None) or type(e).__name__


async def database(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    host, port = database_address(settings.database_url)
    try:
        await _postgres(host, port, timeout_s)
    except (OSError, TimeoutError, NotThatServer) as e:
        where = f"{port}" if host == "unix" else f"{host}:{port}"
        raise OpsError(
            f"cannot reach PostgreSQL at {where} ({_why(e)})", option="BILLSTREAM_DATABASE_URL"
        ) from None


async def broker(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """At least one bootstrap address answers (as the Kafka client needs)."""
    whys = []
    for host, port in broker_addresses(settings.kafka_bootstrap):
        try:
            await _kafka(host, port, timeout_s)
            return
        except (OSError, TimeoutError, NotThatServer) as e:
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

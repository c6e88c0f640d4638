"""What the benchmarks share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


async def serve_until_sigterm(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], port: int
) -> None:
    """A plain asyncio TCP server on 127.0.0.1:``port`` until the process gets SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await stop.wait()


async def read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """One HTTP/1.1 request off ``reader``: its headers (names lower-cased) and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if line:
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
    return headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def start_stack(
    pg: Any, kafka: Any, *, database: str, partitions: int, tenant: str, name: str
) -> tuple[str, str]:
    """Start the embedded PostgreSQL and broker, create and migrate ``database``, create the
    topics and the tenant; return the database URL and the tenant's API key."""
    from storage.db import migrate
    from workers.admin import create_tenant
    from workers.runtime.topics import ensure_topics

    t = time.perf_counter()
    pg.start()
    kafka.start()
    url: str = await pg.create_database(database)
    await migrate(url)
    await ensure_topics(kafka.bootstrap, partitions=partitions, replication=1)
    _, key = await create_tenant(url, tenant, name)
    print(f"stack up in {time.perf_counter() - t:.1f} s", flush=True)
    return url, key

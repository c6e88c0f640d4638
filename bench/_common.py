"""What the benchmarks share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path


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

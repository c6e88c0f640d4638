"""A worker process runs on uvloop where it is installed (ADR 0058): its event loop and
sockets cost a quarter less CPU per message than asyncio's own loop (bench/RESULTS.md)."""

from __future__ import annotations

import asyncio
import inspect

from workers import cli


def test_a_worker_runs_its_main_on_uvloop() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert cli.run_on_uvloop(loop_module()).startswith("uvloop")
    assert "run_on_uvloop(" in inspect.getsource(cli.worker)

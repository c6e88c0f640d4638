"""A real ingress (uvicorn on a free loopback port) and a client that speaks its API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import uvicorn

from tests.conftest import TenantKey
from workers.devstack import free_port, wait_for
from workers.ingress.app import create_app
from workers.settings import Settings


async def serve(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout_s=10)
    return server, task, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def ingress(settings: Settings) -> AsyncIterator[str]:
    server, task, base = await serve(settings)
    try:
        yield base
    finally:
        server.should_exit = True
        await task


def exact(response: httpx.Response) -> Any:
    """The JSON body with numbers as Decimals (amounts must not pass through floats)."""
    return json.loads(response.text, parse_float=Decimal)


@dataclass
class Client:
    """One tenant's view of the API."""

    http: httpx.AsyncClient
    key: TenantKey

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.api_key}"}

    async def get(self, path: str, **params: Any) -> Any:
        r = await self.http.get(path, params=params, headers=self.auth)
        assert r.status_code == 200, r.text
        return exact(r)

    async def send(self, method: str, path: str, body: Any) -> httpx.Response:
        return await self.http.request(method, path, json=body, headers=self.auth)

    async def outcome(self, command_id: str, timeout_s: float = 20) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            body: dict[str, Any] = await self.get(f"/v1/commands/{command_id}")
            return body if body["status"] != "pending" else None

        result: dict[str, Any] = await wait_for(done, timeout_s=timeout_s)
        return result

    async def command(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """Send a write; return its final outcome (succeeded or failed)."""
        r = await self.send(method, path, body)
        assert r.status_code == 202, r.text
        return await self.outcome(r.json()["command_id"])

    async def ok(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """Send a write that must succeed; return its result."""
        outcome = await self.command(method, path, body)
        assert outcome["status"] == "succeeded", outcome
        result: dict[str, Any] = outcome["result"]
        return result

"""What operators see of a worker: health, readiness, metrics; and the dedupe window."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import inbox
from workers.devstack import free_port
from workers.metering.app import build
from workers.settings import Settings


async def test_worker_serves_health_readiness_and_metrics(settings: Settings) -> None:
    worker = build(settings.model_copy(update={"metrics_port": free_port()}))
    await worker.start()
    try:
        assert worker.health is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.health.port}") as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ok", "database": "ok", "broker": "ok"}
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "billstream_messages_consumed_total" in metrics.text
            assert "billstream_outbox_backlog" in metrics.text
            assert (await http.get("/nope")).status_code == 404
    finally:
        await worker.stop()


async def test_inbox_keeps_ids_for_the_dedupe_window_then_forgets_them(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    old, recent = inbox.message_key("acme", "s", "old"), inbox.message_key("acme", "s", "new")
    async with sessions() as session, session.begin():
        assert await inbox.claim(session, "g", [old, recent]) == {old, recent}
        await session.execute(
            text(
                "UPDATE inbox SET processed_at = now() - interval '36 days' WHERE message_key = :k"
            ),
            {"k": old},
        )
    async with sessions() as session, session.begin():
        assert await inbox.purge(session, timedelta(days=35)) == 1
    async with sessions() as session, session.begin():
        # the recent id is still a duplicate; the expired one is accepted again
        assert await inbox.claim(session, "g", [old, recent]) == {old}

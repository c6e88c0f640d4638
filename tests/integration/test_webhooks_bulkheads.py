"""Webhook bulkheads: what one tenant does to its endpoints (deleting them while a delivery
is in flight, resending, recovering) never stops another tenant's deliveries from being
sent and recorded; trailing-dot hostnames deliver. Real broker, real PostgreSQL, real HTTP
receivers on loopback."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from schemas import topics
from schemas.topics import partition_key
from schemas.webhooks import DeleteEndpoint, EndpointRef, MessageRef, ResendMessage
from storage.quarantine import Entry, QuarantineRepository
from storage.webhooks import WebhookRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.support import (
    Sessions,
    command_outcome,
    producer,
    read_topic,
    running,
    send_raw,
)
from tests.integration.test_webhooks import (
    FakeClock,
    Receiver,
    Reply,
    add_endpoint,
    advance,
    billing_event,
    clock,  # noqa: F401  (the fixture)
    dispatcher,
    messages,
    passes,
    publish,
    receiver,  # noqa: F401  (the fixture)
    worker,
    wsettings,  # noqa: F401  (the fixture)
)
from workers.devstack import wait_for
from workers.runtime.app import Worker
from workers.settings import Settings
from workers.webhooks import service
from workers.webhooks.delivery import Deliverer
from workers.webhooks.domain import (
    AttemptResult,
    AttemptRow,
    Claimed,
    MessageUpdate,
    NewMessage,
    RetryPolicy,
)


async def _command(
    p: AIOKafkaProducer, sessions: Sessions, command: DeleteEndpoint | ResendMessage
) -> None:
    key = partition_key(command.tenantid, command.data.endpoint_id).encode()
    await send_raw(p, topics.COMMANDS_WEBHOOKS, command.to_json(), key)
    outcome = await command_outcome(sessions, command.tenantid, command.id, timeout_s=20)
    assert outcome.status == "succeeded", outcome


async def _count(sessions: Sessions, sql: str, **params: str) -> int:
    async with sessions() as session:
        return int(await session.scalar(text(sql), params) or 0)


def _idle(w: Worker) -> bool:
    return dispatcher(w).in_flight == 0


def _all_succeeded(
    sessions: Sessions, tenant: str, endpoint_id: str, n: int
) -> Callable[[], Awaitable[bool]]:
    """A check: the endpoint has ``n`` messages, each recorded as succeeded."""

    async def check() -> bool:
        ms = await messages(sessions, tenant, endpoint_id)
        return len(ms) == n and all(m.status == "succeeded" for m in ms)

    return check


async def test_deleting_endpoints_during_their_deliveries_never_stops_another_tenants(
    wsettings: Settings,  # noqa: F811
    sessions: Sessions,
    tenant: TenantKey,
    receiver: Receiver,  # noqa: F811
    clock: FakeClock,  # noqa: F811
) -> None:
    a = tenant.tenant_id
    b = (await make_tenant(sessions, "globex")).tenant_id
    release = asyncio.Event()
    # tenant A: three endpoints whose receivers hold the request until A deleted them all
    doomed = []
    for i in range(3):
        path = f"/a{i}"
        receiver.script[path] = [Reply(gate=release)]
        doomed.append(await add_endpoint(sessions, a, receiver.url(path)))
    # ... and one that stays, told about each deletion (its fan-out races the deletes)
    survivor = await add_endpoint(sessions, a, receiver.url("/a-kept"))
    kept = await add_endpoint(sessions, b, receiver.url("/b"))
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        await publish(p, billing_event(a))
        await wait_for(lambda: all(receiver.to(f"/a{i}") for i in range(3)), timeout_s=20)
        # a resend of a message still in flight: sent again now, the first outcome is stale
        held = receiver.to("/a0")[0].msg_id
        ref = MessageRef(endpoint_id=doomed[0], message_id=held)
        await _command(p, sessions, ResendMessage(source="tests", tenantid=a, data=ref))
        await wait_for(lambda: len(receiver.to("/a0")) == 2, timeout_s=20)
        for ep in doomed:  # several in a row, each while its delivery is in flight
            await _command(
                p,
                sessions,
                DeleteEndpoint(source="tests", tenantid=a, data=EndpointRef(endpoint_id=ep)),
            )
        release.set()  # the three attempts finish now: their outcomes have nowhere to go

        for _ in range(3):
            await publish(p, billing_event(b))
        await wait_for(lambda: len(receiver.to("/b")) == 3, timeout_s=20)

        await wait_for(_all_succeeded(sessions, b, kept, 3), timeout_s=20)
        await wait_for(lambda: _idle(w), timeout_s=10)  # every in-flight slot is free again
        # and delivery keeps going: one more for B is sent and recorded
        await publish(p, billing_event(b))
        await wait_for(_all_succeeded(sessions, b, kept, 4), timeout_s=20)
        # A's remaining endpoint got the invoice and the news of each deletion
        await wait_for(_all_succeeded(sessions, a, survivor, 4), timeout_s=20)
        await wait_for(lambda: _idle(w), timeout_s=10)
    assert sorted(r.event["type"] for r in receiver.to("/a-kept")) == [
        "invoice.finalized",
        *["webhook.endpoint_deleted"] * 3,
    ]
    # nothing of A's deleted endpoints is left behind, not even the attempts in flight
    for table in ("webhook_messages", "webhook_attempts"):
        sql = f"SELECT count(*) FROM {table} WHERE tenant_id = :t AND endpoint_id <> :e"
        assert await _count(sessions, sql, t=a, e=survivor) == 0
    assert (
        await _count(sessions, "SELECT count(*) FROM webhook_attempts WHERE tenant_id = :t", t=b)
        == 4
    )
    assert [r.path for r in receiver.requests].count("/b") == 4  # each once: none re-sent


async def test_rows_of_a_deleted_endpoint_are_dropped_not_failing_the_batch(
    sessions: Sessions, tenant: TenantKey
) -> None:
    """The races above, made deterministic: a fan-out batch and a batch of outcomes that
    name an endpoint deleted since (by another transaction) write the rest and drop its
    rows; the delete, had it come first, is not blocked either."""
    t = tenant.tenant_id
    other = (await make_tenant(sessions, "globex")).tenant_id
    gone = await add_endpoint(sessions, t, "http://127.0.0.1:9/gone")
    stays = await add_endpoint(sessions, other, "http://127.0.0.1:9/stays")
    now = datetime.now(UTC)

    def new(tenant_id: str, endpoint_id: str, n: int) -> NewMessage:
        return NewMessage(
            tenant_id, f"msg_{endpoint_id}_{n}", endpoint_id, f"ev{n}", "x.y", b"{}", now
        )

    async with sessions() as session, session.begin():
        repo = WebhookRepository(session)
        await repo.add_messages([new(t, gone, 0), new(other, stays, 0)])
        claimed = await repo.claim_due(now, 10, now + timedelta(minutes=1))
    assert len(claimed) == 2
    async with sessions() as session, session.begin():
        assert await WebhookRepository(session).delete(t, gone)

    async with sessions() as session, session.begin():
        # a fan-out that read the endpoints before the delete: only the live one is written
        assert (
            await WebhookRepository(session).add_messages([new(t, gone, 1), new(other, stays, 1)])
            == 1
        )
    async with sessions() as session, session.begin():
        # the outcomes of both deliveries in flight: the deleted one's is dropped
        rng = random.Random(1)
        policy = RetryPolicy(schedule=(5,), jitter=0.0)
        result = AttemptResult(attempted_at=now, latency_ms=3, status_code=200, body="ok")
        outcomes = [service.outcome(c, result, policy, rng) for c in claimed]
        applied = await WebhookRepository(session).record(
            [o.update for o in outcomes],
            [o.attempt for o in outcomes],
            {(c.tenant_id, c.endpoint_id) for c in claimed},
        )
    assert applied == {(other, f"msg_{stays}_0")}
    assert [m.status for m in await messages(sessions, other, stays)] == ["succeeded", "pending"]
    assert (
        await _count(sessions, "SELECT count(*) FROM webhook_attempts WHERE tenant_id = :t", t=t)
        == 0
    )
    assert (
        await _count(sessions, "SELECT count(*) FROM webhook_messages WHERE tenant_id = :t", t=t)
        == 0
    )


async def test_an_outcome_that_cannot_be_recorded_is_quarantined_and_the_others_are_recorded(
    wsettings: Settings,  # noqa: F811
    sessions: Sessions,
    tenant: TenantKey,
    receiver: Receiver,  # noqa: F811
    clock: FakeClock,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = tenant.tenant_id
    b = (await make_tenant(sessions, "globex")).tenant_id
    poison = await add_endpoint(sessions, a, receiver.url("/poison"), event_types=["invoice.*"])
    fine = await add_endpoint(sessions, a, receiver.url("/fine"), event_types=["invoice.*"])
    other = await add_endpoint(sessions, b, receiver.url("/other"), event_types=["invoice.*"])
    real_record = WebhookRepository.record
    hiccups = [ConnectionError("database connection lost")]  # once, on B's outcome

    async def record(
        self: WebhookRepository,
        updates: list[MessageUpdate],
        attempts: list[AttemptRow],
        endpoints: set[tuple[str, str]],
    ) -> set[tuple[str, str]]:
        if any(r.endpoint_id == poison for r in attempts):
            raise ValueError("a bug met by this endpoint's data")
        if hiccups and any(r.endpoint_id == other for r in attempts):
            raise hiccups.pop()
        return await real_record(self, updates, attempts, endpoints)

    monkeypatch.setattr(WebhookRepository, "record", record)
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        await publish(p, billing_event(a))
        await publish(p, billing_event(b))
        await wait_for(_all_succeeded(sessions, a, fine, 1), timeout_s=20)
        await wait_for(_all_succeeded(sessions, b, other, 1), timeout_s=20)
        await wait_for(lambda: _idle(w), timeout_s=10)
        assert not hiccups  # the transient failure happened, and was retried
        async with sessions() as session:
            [q] = await QuarantineRepository(session).list()
        [sent] = receiver.to("/poison")
        assert (q.tenant_id, q.job, q.kind, q.item_id) == (
            a,
            "webhooks.record",
            "webhook_message",
            sent.msg_id,
        )
        assert "a bug met by this endpoint's data" in q.reason
        [record_] = await read_topic(wsettings, topics.EVENTS_OPS, 1)
        alert = json.loads(record_.value)
        assert (alert["type"], alert["tenantid"]) == ("ops.quarantined", a)
        assert alert["data"]["item_id"] == sent.msg_id

        # its lease expires: a quarantined message is not sent again (nor holds a slot)
        await advance(w, clock, seconds=wsettings.webhook_timeout_s + 61)
        await passes(w, 3)
        assert len(receiver.to("/poison")) == 1 and _idle(w)
        # B's endpoint keeps delivering meanwhile
        await publish(p, billing_event(b))
        await wait_for(_all_succeeded(sessions, b, other, 2), timeout_s=20)

        # the bug fixed, an operator releases it: sent again (same webhook-id) and recorded
        monkeypatch.setattr(WebhookRepository, "record", real_record)
        async with sessions() as session, session.begin():
            assert await QuarantineRepository(session).release(q.id, "tests") is not None
        await advance(w, clock, seconds=1)
        await wait_for(_all_succeeded(sessions, a, poison, 1), timeout_s=20)
    assert [r.msg_id for r in receiver.to("/poison")] == [sent.msg_id] * 2
    assert len(receiver.to("/fine")) == 1 and len(receiver.to("/other")) == 2


async def test_a_message_whose_delivery_crashes_is_quarantined_and_not_claimed_again(
    wsettings: Settings,  # noqa: F811
    sessions: Sessions,
    tenant: TenantKey,
    receiver: Receiver,  # noqa: F811
    clock: FakeClock,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = tenant.tenant_id
    b = (await make_tenant(sessions, "globex")).tenant_id
    poison = await add_endpoint(sessions, a, receiver.url("/poison"), event_types=["invoice.*"])
    other = await add_endpoint(sessions, b, receiver.url("/other"), event_types=["invoice.*"])
    real_deliver = Deliverer.deliver
    crashes: list[str] = []

    async def deliver(self: Deliverer, message: Claimed) -> AttemptResult:
        if message.endpoint_id == poison:
            crashes.append(message.id)
            raise KeyError("a bug met by this message's data")
        return await real_deliver(self, message)

    monkeypatch.setattr(Deliverer, "deliver", deliver)
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        await publish(p, billing_event(a))
        await publish(p, billing_event(b))
        await wait_for(_all_succeeded(sessions, b, other, 1), timeout_s=20)
        await wait_for(lambda: bool(crashes) and _idle(w), timeout_s=10)

        async def quarantined() -> list[Entry]:
            async with sessions() as session:
                return await QuarantineRepository(session).list()

        [q] = await wait_for(quarantined, timeout_s=10)
        assert (q.tenant_id, q.job, q.kind, q.item_id) == (
            a,
            "webhooks.deliver",
            "webhook_message",
            crashes[0],
        )
        await advance(w, clock, seconds=wsettings.webhook_timeout_s + 61)  # lease expired
        await passes(w, 3)
        await publish(p, billing_event(b))
        await wait_for(_all_succeeded(sessions, b, other, 2), timeout_s=20)
    assert len(crashes) == 1  # not tried again
    [m] = await messages(sessions, a, poison)
    assert m.status == "pending" and m.attempts == 0

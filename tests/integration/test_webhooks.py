"""Webhook delivery against the real broker, real PostgreSQL and real HTTP receivers on
loopback: signatures (checked with the independent ``standardwebhooks`` package), retries
on an injected clock, 410, timeouts, redirects, SSRF at connect time, restarts with
retries pending, two replicas, strict ordering, and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from standardwebhooks import Webhook

from schemas import groups, topics
from schemas.envelope import CloudEvent, new_id
from schemas.webhooks import (
    CreateEndpoint,
    CreateEndpointData,
    EndpointCreated,
    EndpointDisabled,
    MessageFailed,
    RecoverData,
    RecoverMessages,
    UpdateEndpoint,
    UpdateEndpointData,
    new_endpoint_id,
)
from storage.webhooks import WebhookRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.support import (
    Sessions,
    command_outcome,
    producer,
    read_topic,
    running,
    send_raw,
    wait_committed_to_end,
)
from workers.devstack import free_port, wait_for
from workers.ingress.app import create_app
from workers.runtime import Runtime
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings
from workers.webhooks import app, service
from workers.webhooks.domain import NewMessage, utc_now
from workers.webhooks.jobs import Dispatcher
from workers.webhooks.service import message_id
from workers.webhooks.views import AttemptView, MessageView

GROUP_INVOICING = groups.webhooks_fanout(topics.EVENTS_INVOICING)

# --- a local receiver ----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False  # never answer (the client times out)
    gate: asyncio.Event | None = None  # answer only once this is set


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 (keep-alive) that records every request and answers
    from a script per path: ``script[path]`` is consumed first, then ``default[path]``."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: dict[str, list[Reply]] = {}
        self.default: dict[str, Reply] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _method, path, _version = line.decode("latin-1").split()
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(path, headers, body))
                queue = self.script.get(path)
                reply = queue.pop(0) if queue else self.default.get(path, Reply())
                if reply.hang:
                    await asyncio.Event().wait()
                if reply.gate is not None:
                    await reply.gate.wait()
                head = [f"HTTP/1.1 {reply.status} X", f"Content-Length: {len(reply.body)}"]
                head += [f"{k}: {v}" for k, v in reply.headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


# --- time, workers, events -------------------------------------------------------------


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    # real "now": the receiver-side standardwebhooks check accepts timestamps ±5 min
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.0/8"],
            "webhook_poll_interval_s": 0.05,
            "webhook_timeout_s": 5.0,
        }
    )


_dispatchers: dict[int, Dispatcher] = {}


def worker(settings: Settings, clock: Callable[[], datetime] = utc_now, **kw: Any) -> Worker:
    """The webhooks worker as ``app.build`` makes it, its dispatcher kept for ``dispatcher``."""
    made: list[Dispatcher] = []

    def register(runtime: Runtime) -> None:
        made.append(app.register(runtime, settings, clock=clock, rng=random.Random(7), **kw))

    w = build_worker("webhooks", settings, register)
    _dispatchers[id(w)] = made[0]
    return w


def dispatcher(w: Worker) -> Dispatcher:
    """The dispatch job of a worker made by ``worker``."""
    return _dispatchers[id(w)]


def billing_event(tenant: str, type: str = "invoice.finalized", **data: Any) -> CloudEvent:
    return CloudEvent(
        source="tests/invoicing",
        type=type,
        subject="cust-1",
        tenantid=tenant,
        data=data or {"invoice_id": new_id(), "amount": 1250, "currency": "EUR"},
    )


async def publish(
    p: AIOKafkaProducer, event: CloudEvent, topic: str = topics.EVENTS_INVOICING
) -> bytes:
    value = event.to_json()
    await send_raw(p, topic, value, f"{event.tenantid}:cust-1".encode())
    return value


async def add_endpoint(
    sessions: Sessions, tenant: str, url: str, *, secret: str = "whsec_" + "A" * 43, **spec: Any
) -> str:
    """An endpoint straight in the database (the arrangement of tests not about commands)."""
    command = CreateEndpoint(
        source="tests",
        tenantid=tenant,
        data=CreateEndpointData(url=url, endpoint_id=new_endpoint_id(), **spec),
    )
    async with sessions() as session, session.begin():
        existing = await WebhookRepository(session).add_endpoint(
            service.new_endpoint(command), secret, datetime.now(UTC)
        )
        assert existing is None
    return command.data.endpoint_id


async def messages(sessions: Sessions, tenant: str, endpoint_id: str) -> list[MessageView]:
    async with sessions() as session:
        rows = await WebhookRepository(session).messages(tenant, endpoint_id)
    return [m for _, m in reversed(rows)]  # oldest first


async def attempts(
    sessions: Sessions, tenant: str, endpoint_id: str, msg: str | None = None
) -> list[AttemptView]:
    async with sessions() as session:
        rows = await WebhookRepository(session).attempts(tenant, endpoint_id, message_id=msg)
    return list(reversed(rows))


async def wait_requests(
    r: Receiver, n: int, path: str = "/hook", timeout_s: float = 20
) -> list[Received]:
    await wait_for(lambda: len(r.to(path)) >= n, timeout_s=timeout_s)
    got = r.to(path)
    assert len(got) == n, [x.msg_id for x in got]
    return got


async def wait_message(
    sessions: Sessions,
    tenant: str,
    endpoint_id: str,
    predicate: Callable[[MessageView], bool],
    timeout_s: float = 20,
) -> MessageView:
    async def found() -> MessageView | None:
        for m in await messages(sessions, tenant, endpoint_id):
            if predicate(m):
                return m
        return None

    result: MessageView = await wait_for(found, timeout_s=timeout_s)
    return result


async def passes(w: Worker, n: int = 2) -> None:
    """Let the dispatcher make ``n`` more claim passes (woken at once)."""
    d = dispatcher(w)
    target = d.passes + n
    for _ in range(n):
        d.wake()
    await wait_for(lambda: d.passes >= target, timeout_s=10)


async def advance(w: Worker, clock: FakeClock, **kw: float) -> None:
    clock.advance(**kw)
    dispatcher(w).wake()


# --- delivery, signatures, fan-out ------------------------------------------------------


async def test_an_event_is_delivered_once_signed_verifiably_to_each_matching_endpoint(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    invoices = await add_endpoint(
        sessions, t, receiver.url("/invoices"), secret=secret, event_types=["invoice.*"]
    )
    everything = await add_endpoint(sessions, t, receiver.url("/all"))
    meters_only = await add_endpoint(
        sessions, t, receiver.url("/meters"), event_types=["meter.created"]
    )
    other = await make_tenant(sessions, "globex")
    foreign = await add_endpoint(sessions, other.tenant_id, receiver.url("/globex"))
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        event = billing_event(t)
        body = await publish(p, event)
        await publish(p, event)  # the same event again (a redelivery upstream)
        [got] = await wait_requests(receiver, 1, "/invoices")
        await wait_requests(receiver, 1, "/all")

        # verified by an independent implementation of the Standard Webhooks spec
        assert Webhook(secret).verify(got.body, got.headers) == json.loads(body)
        assert got.body == body  # our CloudEvents JSON, byte for byte
        assert got.headers["content-type"] == "application/json"
        assert got.msg_id == message_id(invoices, event.source, event.id)
        assert int(got.headers["webhook-timestamp"]) == int(clock.now.timestamp())

        m = await wait_message(sessions, t, invoices, lambda m: m.status != "pending")
        assert len(await messages(sessions, t, invoices)) == 1
        assert (m.id, m.status, m.attempts, m.event_type) == (
            got.msg_id,
            "succeeded",
            1,
            "invoice.finalized",
        )
        [a] = await attempts(sessions, t, invoices)
        assert (a.status, a.response_status, a.response_body, a.error) == (
            "succeeded",
            200,
            "ok",
            None,
        )
        assert a.latency_ms >= 0

        # each endpoint has its own message id for the event; non-matching ones get none
        [m_all] = await messages(sessions, t, everything)
        assert m_all.id != m.id and m_all.event_id == event.id
        assert await messages(sessions, t, meters_only) == []
        assert await messages(sessions, other.tenant_id, foreign) == []
        await wait_committed_to_end(wsettings, GROUP_INVOICING, topics.EVENTS_INVOICING)
        await passes(w)
    assert receiver.to("/meters") == [] and receiver.to("/globex") == []
    assert len(receiver.to("/invoices")) == 1 and len(receiver.to("/all")) == 1


# --- retries, schedule, failure ----------------------------------------------------------


async def test_a_failing_receiver_is_retried_on_the_schedule_with_the_same_webhook_id(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    ep = await add_endpoint(sessions, t, receiver.url())
    receiver.script["/hook"] = [Reply(500, body=b"boom"), Reply(502), Reply(500)]
    t0 = clock.now
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        await publish(p, billing_event(t))
        m = await wait_message(sessions, t, ep, lambda m: m.attempts == 1)
        # first retry 5 s after the failure, ±20 % jitter
        assert m.status == "pending" and m.next_attempt_at is not None
        assert timedelta(seconds=4) <= m.next_attempt_at - t0 <= timedelta(seconds=6)
        await passes(w)
        assert len(receiver.to("/hook")) == 1  # not before it is due

        await advance(w, clock, seconds=6)
        m = await wait_message(sessions, t, ep, lambda m: m.attempts == 2)
        assert m.next_attempt_at is not None  # then 5 min
        gap = m.next_attempt_at - clock.now
        assert timedelta(minutes=4) <= gap <= timedelta(minutes=6)
        await advance(w, clock, minutes=6)
        m = await wait_message(sessions, t, ep, lambda m: m.attempts == 3)
        assert m.next_attempt_at is not None  # then 30 min
        gap = m.next_attempt_at - clock.now
        assert timedelta(minutes=24) <= gap <= timedelta(minutes=36)
        await advance(w, clock, minutes=36)
        m = await wait_message(sessions, t, ep, lambda m: m.status == "succeeded")

    got = receiver.to("/hook")
    assert len(got) == 4
    assert len({r.msg_id for r in got}) == 1 and got[0].msg_id == m.id  # one message
    assert len({r.body for r in got}) == 1
    assert m.attempts == 4
    tried = await attempts(sessions, t, ep, m.id)
    assert [(a.status, a.response_status) for a in tried] == [
        ("failed", 500),
        ("failed", 502),
        ("failed", 500),
        ("succeeded", 200),
    ]
    assert tried[0].response_body == "boom" and tried[0].error == "HTTP 500"


async def test_after_the_last_attempt_the_message_fails_and_can_be_recovered(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    s = wsettings.model_copy(update={"webhook_retry_schedule_s": [10, 10]})  # 3 attempts
    ep = await add_endpoint(sessions, t, receiver.url())
    receiver.default["/hook"] = Reply(500)
    t0 = clock.now
    async with running(worker(s, clock)) as w, producer(s) as p:
        event = billing_event(t)
        await publish(p, event)
        await wait_message(sessions, t, ep, lambda m: m.attempts == 1)
        await advance(w, clock, seconds=15)
        await wait_message(sessions, t, ep, lambda m: m.attempts == 2)
        await advance(w, clock, seconds=15)
        m = await wait_message(sessions, t, ep, lambda m: m.status == "failed")
        assert m.attempts == 3 and m.next_attempt_at is None

        [record] = await read_topic(s, topics.EVENTS_WEBHOOKS, 1)
        failed = MessageFailed.model_validate_json(record.value)
        assert failed.data.message_id == m.id and failed.data.event_id == event.id
        assert (failed.data.attempts, failed.data.last_response_status) == (3, 500)
        assert record.key == f"{t}:{ep}".encode()
        await advance(w, clock, hours=30)
        await passes(w)
        assert len(receiver.to("/hook")) == 3  # failed is final

        # the receiver is fixed; recover every failed message since t0
        receiver.default["/hook"] = Reply(204, body=b"")
        recover = RecoverMessages(
            source="tests", tenantid=t, data=RecoverData(endpoint_id=ep, since=t0)
        )
        await send_raw(p, topics.COMMANDS_WEBHOOKS, recover.to_json(), f"{t}:{ep}".encode())
        outcome = await command_outcome(sessions, t, recover.id)
        assert outcome.status == "succeeded" and outcome.result == {
            "endpoint_id": ep,
            "recovered": 1,
        }
        m = await wait_message(sessions, t, ep, lambda m: m.status == "succeeded")
    got = receiver.to("/hook")
    assert len(got) == 4 and {r.msg_id for r in got} == {m.id}


async def test_retry_after_is_honoured_on_429(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    ep = await add_endpoint(sessions, t, receiver.url())
    receiver.script["/hook"] = [Reply(429, headers={"Retry-After": "3600"})]
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        await publish(p, billing_event(t))
        m = await wait_message(sessions, t, ep, lambda m: m.attempts == 1)
        assert m.next_attempt_at is not None and m.last_attempt_at is not None
        assert m.next_attempt_at - m.last_attempt_at >= timedelta(seconds=3600)
        await advance(w, clock, minutes=30)  # the schedule alone would have retried by now
        await passes(w)
        assert len(receiver.to("/hook")) == 1
        await advance(w, clock, minutes=31)
        await wait_message(sessions, t, ep, lambda m: m.status == "succeeded")


async def test_a_timeout_and_a_redirect_are_failures_and_redirects_are_not_followed(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    s = wsettings.model_copy(update={"webhook_timeout_s": 0.3})
    slow = await add_endpoint(sessions, t, receiver.url("/slow"))
    moved = await add_endpoint(sessions, t, receiver.url("/moved"))
    receiver.default["/slow"] = Reply(hang=True)
    receiver.default["/moved"] = Reply(302, headers={"Location": receiver.url("/elsewhere")})
    async with running(worker(s, clock)), producer(s) as p:
        await publish(p, billing_event(t))
        m_slow = await wait_message(sessions, t, slow, lambda m: m.attempts == 1)
        m_moved = await wait_message(sessions, t, moved, lambda m: m.attempts == 1)
    [a_slow] = await attempts(sessions, t, slow)
    assert (a_slow.status, a_slow.response_status) == ("failed", None)
    assert a_slow.error == "no answer within 0.3 s"
    [a_moved] = await attempts(sessions, t, moved)
    assert (a_moved.status, a_moved.response_status) == ("failed", 302)
    assert a_moved.error == "HTTP 302: redirects are not followed"
    assert m_slow.status == m_moved.status == "pending"  # retried later, as any failure
    assert receiver.to("/elsewhere") == []


async def test_410_disables_the_endpoint_and_reenabling_resumes_delivery(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    ep = await add_endpoint(sessions, t, receiver.url())
    await add_endpoint(sessions, t, receiver.url("/watch"), event_types=["webhook.*"])
    receiver.script["/hook"] = [Reply(410)]
    async with running(worker(wsettings, clock)) as w, producer(wsettings) as p:
        first = billing_event(t)
        await publish(p, first)
        [record] = await read_topic(wsettings, topics.EVENTS_WEBHOOKS, 1)
        disabled = EndpointDisabled.model_validate_json(record.value)
        assert (disabled.data.endpoint_id, disabled.data.reason) == (ep, "gone")
        async with sessions() as session:
            endpoint = await WebhookRepository(session).get(t, ep)
        assert endpoint is not None and not endpoint.enabled
        assert endpoint.disabled_reason == "gone"
        # the other endpoint, subscribed to webhook.*, is told
        [told] = await wait_requests(receiver, 1, "/watch")
        assert told.event["type"] == "webhook.endpoint_disabled"

        # while disabled: nothing is sent, new events make no messages for it
        await publish(p, billing_event(t))
        await wait_committed_to_end(wsettings, GROUP_INVOICING, topics.EVENTS_INVOICING)
        await advance(w, clock, minutes=10)
        await passes(w)
        assert len(receiver.to("/hook")) == 1
        assert len(await messages(sessions, t, ep)) == 1

        enable = UpdateEndpoint(
            source="tests", tenantid=t, data=UpdateEndpointData(endpoint_id=ep, enabled=True)
        )
        await send_raw(p, topics.COMMANDS_WEBHOOKS, enable.to_json(), f"{t}:{ep}".encode())
        assert (await command_outcome(sessions, t, enable.id)).status == "succeeded"
        m = await wait_message(sessions, t, ep, lambda m: m.status == "succeeded")
    assert m.event_id == first.id and m.attempts == 2
    assert [r.msg_id for r in receiver.to("/hook")] == [m.id, m.id]


async def test_an_endpoint_failing_continuously_for_the_configured_time_is_disabled(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    s = wsettings.model_copy(
        update={"webhook_disable_after_s": 3600, "webhook_retry_schedule_s": [1800, 1800, 1800]}
    )
    ep = await add_endpoint(sessions, t, receiver.url())
    receiver.default["/hook"] = Reply(500)
    t0 = clock.now
    async with running(worker(s, clock)) as w, producer(s) as p:
        await publish(p, billing_event(t))
        await wait_message(sessions, t, ep, lambda m: m.attempts == 1)
        await advance(w, clock, minutes=40)
        await wait_message(sessions, t, ep, lambda m: m.attempts == 2)
        async with sessions() as session:
            endpoint = await WebhookRepository(session).get(t, ep)
        assert endpoint is not None and endpoint.enabled and endpoint.failing_since == t0
        await advance(w, clock, minutes=40)  # 80 min of failures now
        [record] = await read_topic(s, topics.EVENTS_WEBHOOKS, 1)
    disabled = EndpointDisabled.model_validate_json(record.value)
    assert (disabled.data.reason, disabled.data.failing_since) == ("failing", t0)
    async with sessions() as session:
        endpoint = await WebhookRepository(session).get(t, ep)
    assert endpoint is not None and not endpoint.enabled and endpoint.disabled_reason == "failing"


# --- SSRF at connect time ---------------------------------------------------------------


async def test_a_hostname_that_resolves_to_a_private_address_at_connect_time_is_refused(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    answers = {"hooks.example.com": ["127.0.0.1"], "rebind.example.com": ["10.1.2.3"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    # the receiver listens on 127.0.0.1, which the settings allow; 10/8 is not allowed
    ok = await add_endpoint(sessions, t, f"http://hooks.example.com:{receiver.port}/hook")
    bad = await add_endpoint(sessions, t, f"http://rebind.example.com:{receiver.port}/hook")
    async with running(worker(wsettings, clock, resolver=resolver)), producer(wsettings) as p:
        await publish(p, billing_event(t))
        await wait_message(sessions, t, ok, lambda m: m.status == "succeeded")
        await wait_message(sessions, t, bad, lambda m: m.attempts == 1)
    [got] = receiver.to("/hook")
    assert got.headers["host"] == f"hooks.example.com:{receiver.port}"
    [refused] = await attempts(sessions, t, bad)
    assert refused.status == "failed" and refused.response_status is None
    assert refused.error is not None and refused.error.startswith("refused destination: ")
    assert "10.1.2.3, a private address" in refused.error


# --- durability and replicas ------------------------------------------------------------


async def test_a_delivery_in_flight_when_the_worker_stops_finishes_and_is_recorded(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    release = asyncio.Event()
    receiver.script["/hook"] = [Reply(gate=release)]
    ep = await add_endpoint(sessions, t, receiver.url())
    w = worker(wsettings, clock)
    await w.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with producer(wsettings) as p:
            await publish(p, billing_event(t))
        await wait_requests(receiver, 1)  # sent; the receiver holds the answer
        stopping = asyncio.create_task(w.stop())
        await wait_for(lambda: w.runtime.stopping.is_set(), timeout_s=10)
        release.set()  # answered while the worker stops: the outcome is still recorded
        await stopping
    finally:
        if stopping is None:
            await w.stop()
    [m] = await messages(sessions, t, ep)
    assert (m.status, m.attempts, m.last_response_status) == ("succeeded", 1, 200)
    assert [a.status for a in await attempts(sessions, t, ep)] == ["succeeded"]
    assert len(receiver.to("/hook")) == 1


async def test_retries_pending_at_a_restart_and_leases_of_a_crashed_process_are_delivered(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    ep = await add_endpoint(sessions, t, receiver.url())
    receiver.script["/hook"] = [Reply(503)]
    async with running(worker(wsettings, clock)), producer(wsettings) as p:
        await publish(p, billing_event(t))
        m = await wait_message(sessions, t, ep, lambda m: m.attempts == 1)
    assert m.status == "pending"
    # a crashed process: it had leased a second message and died before recording it
    crashed = billing_event(t)
    async with sessions() as session, session.begin():
        mid = message_id(ep, crashed.source, crashed.id)
        await WebhookRepository(session).add_messages(
            [NewMessage(t, mid, ep, crashed.id, crashed.type, crashed.to_json(), clock.now)]
        )
        [leased] = await WebhookRepository(session).claim_due(
            clock.now, 10, clock.now + timedelta(seconds=75)
        )
        assert leased.id == mid

    clock.advance(seconds=10)  # the retry is due; the lease is not yet expired
    async with running(worker(wsettings, clock)) as w:
        retried = m.id
        await wait_message(sessions, t, ep, lambda x: x.id == retried and x.status == "succeeded")
        await passes(w)
        assert [r.msg_id for r in receiver.to("/hook")] == [m.id, m.id]
        await advance(w, clock, seconds=70)  # now the crashed lease has expired
        await wait_message(sessions, t, ep, lambda x: x.id == mid and x.status == "succeeded")
    assert [r.msg_id for r in receiver.to("/hook")] == [m.id, m.id, mid]


async def test_two_replicas_deliver_every_message_once(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver
) -> None:
    t = tenant.tenant_id
    s = wsettings.model_copy(update={"webhook_claim_batch": 5, "webhook_concurrency": 8})
    eps = [await add_endpoint(sessions, t, receiver.url(f"/r{i}")) for i in range(3)]
    n = 60
    async with running(worker(s)) as a, running(worker(s)) as b, producer(s) as p:
        for _ in range(n):
            await publish(p, billing_event(t))

        async def all_delivered() -> bool:
            async with sessions() as session:
                done = await session.scalar(
                    text("SELECT count(*) FROM webhook_messages WHERE status = 'succeeded'")
                )
            return done == n * len(eps)

        await wait_for(all_delivered, timeout_s=60)
        claimed_by = (dispatcher(a).passes, dispatcher(b).passes)
    ids = [r.msg_id for r in receiver.requests]
    assert len(ids) == n * len(eps) and len(set(ids)) == n * len(eps)  # none twice
    assert all(p > 0 for p in claimed_by)
    async with sessions() as session:
        attempts_total = await session.scalar(text("SELECT count(*) FROM webhook_attempts"))
    assert attempts_total == n * len(eps)


# --- strict ordering ---------------------------------------------------------------------


async def test_an_ordered_endpoint_gets_message_n_plus_1_only_after_message_n_is_done(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver, clock: FakeClock
) -> None:
    t = tenant.tenant_id
    s = wsettings.model_copy(update={"webhook_retry_schedule_s": [10]})  # 2 attempts
    ordered = await add_endpoint(sessions, t, receiver.url("/ordered"), ordered=True)
    unordered = await add_endpoint(sessions, t, receiver.url("/unordered"))
    receiver.script["/ordered"] = [Reply(500), Reply(500), Reply(500)]
    receiver.script["/unordered"] = [Reply(500)]
    events = [billing_event(t, seq=i) for i in range(4)]
    async with running(worker(s, clock)) as w, producer(s) as p:
        for e in events:
            await publish(p, e)
        await wait_for(lambda: len(receiver.to("/unordered")) == 4, timeout_s=20)
        await wait_message(sessions, t, ordered, lambda m: m.attempts == 1)
        await passes(w, 3)
        # the unordered endpoint got all four (the first failed); the ordered one only #0
        assert [r.event["data"]["seq"] for r in receiver.to("/ordered")] == [0]
        await advance(w, clock, seconds=15)  # #0's last attempt fails: finally failed
        await wait_message(
            sessions, t, ordered, lambda m: m.event_id == events[0].id and m.status == "failed"
        )
        # now #1 (which fails once more, then succeeds on its retry), then #2, #3
        await wait_for(lambda: len(receiver.to("/ordered")) == 3, timeout_s=20)
        await passes(w, 3)
        assert [r.event["data"]["seq"] for r in receiver.to("/ordered")] == [0, 0, 1]
        await advance(w, clock, seconds=15)
        await wait_for(lambda: len(receiver.to("/ordered")) == 6, timeout_s=20)
    assert [r.event["data"]["seq"] for r in receiver.to("/ordered")] == [0, 0, 1, 1, 2, 3]
    ms = await messages(sessions, t, ordered)
    assert [m.status for m in ms] == ["failed", "succeeded", "succeeded", "succeeded"]
    # the unordered endpoint got #1..#3 while #0 was still failing (it is subscribed to
    # everything, so it was also told about #0's failure at the ordered endpoint)
    got = receiver.to("/unordered")
    assert [r.event["data"]["seq"] for r in got[:4]] == [0, 1, 2, 3]
    assert [r.event["type"] for r in got[4:]] == ["invoice.finalized", "webhook.message_failed"]
    assert {m.status for m in await messages(sessions, t, unordered)} == {"succeeded"}


# --- the HTTP API ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ingress(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout_s=10)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            yield c
    finally:
        server.should_exit = True
        await task


def auth(key: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.api_key}"}


async def succeeded(
    c: httpx.AsyncClient, key: TenantKey, response: httpx.Response
) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    command_id = response.json()["command_id"]

    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await c.get(f"/v1/commands/{command_id}", headers=auth(key))).json()
        return body if body["status"] != "pending" else None

    outcome: dict[str, Any] = await wait_for(done, timeout_s=20)
    assert outcome["status"] == "succeeded", outcome
    return outcome


async def _outcome(c: httpx.AsyncClient, key: TenantKey, url: str) -> dict[str, Any] | None:
    body: dict[str, Any] = (await c.get(url, headers=auth(key))).json()
    return body if body["status"] != "pending" else None


async def test_the_api_registers_signs_rotates_observes_and_resends(
    wsettings: Settings,
    sessions: Sessions,
    tenant: TenantKey,
    receiver: Receiver,
    capfd: pytest.CaptureFixture[str],
) -> None:
    t = tenant.tenant_id
    other = await make_tenant(sessions, "globex")
    async with running(app.build(wsettings)), ingress(wsettings) as c, producer(wsettings) as p:
        # refused at the ingress, with the field named
        for url, reason in [
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://10.0.0.8/hook", "private"),
            ("ftp://example.com/hook", "https://"),
            ("http://2130706433/", "unusual notation"),
            ("http://user:pw@example.com/", "credentials"),
        ]:
            r = await c.post("/v1/webhooks/endpoints", json={"url": url}, headers=auth(tenant))
            assert r.status_code == 422, (url, r.text)
            [error] = r.json()["errors"]
            assert error["field"] == "url" and reason in error["reason"], error
        r = await c.post(
            "/v1/webhooks/endpoints",
            json={"url": receiver.url(), "event_types": ["inv*"]},
            headers=auth(tenant),
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "event_types"

        r = await c.post(
            "/v1/webhooks/endpoints",
            json={"url": receiver.url(), "event_types": ["invoice.*"], "description": "ERP"},
            headers=auth(tenant),
        )
        outcome = await succeeded(c, tenant, r)
        ep = r.json()["endpoint_id"]
        assert outcome["result"] == {"endpoint_id": ep}
        r = await c.get(f"/v1/webhooks/endpoints/{ep}", headers=auth(tenant))
        assert r.status_code == 200
        view = r.json()
        assert (view["url"], view["event_types"], view["enabled"], view["description"]) == (
            receiver.url(),
            ["invoice.*"],
            True,
            "ERP",
        )
        r = await c.get(f"/v1/webhooks/endpoints/{ep}/secret", headers=auth(tenant))
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        secret = r.json()["key"]
        assert secret.startswith("whsec_") and r.json()["previous_key"] is None

        # another tenant sees none of it
        for path in (f"/v1/webhooks/endpoints/{ep}", f"/v1/webhooks/endpoints/{ep}/secret"):
            assert (await c.get(path, headers=auth(other))).status_code == 404
        assert (await c.get("/v1/webhooks/endpoints", headers=auth(other))).json() == []
        r = await c.patch(
            f"/v1/webhooks/endpoints/{ep}",
            json={"url": "https://evil.example.com/"},
            headers=auth(other),
        )
        assert r.status_code == 202
        cross = await wait_for(lambda: _outcome(c, other, r.json()["status_url"]), timeout_s=20)
        assert cross["status"] == "failed" and cross["error"]["code"] == "not_found"
        r = await c.get(f"/v1/webhooks/endpoints/{ep}", headers=auth(tenant))
        assert r.json()["url"] == receiver.url()

        event = billing_event(t)
        body = await publish(p, event)
        [got] = await wait_requests(receiver, 1)
        assert Webhook(secret).verify(got.body, got.headers) == json.loads(body)

        # rotation: both secrets sign during the overlap
        r = await c.post(
            f"/v1/webhooks/endpoints/{ep}/secret/rotate",
            json={"overlap_s": 3600},
            headers=auth(tenant),
        )
        await succeeded(c, tenant, r)
        keys = (await c.get(f"/v1/webhooks/endpoints/{ep}/secret", headers=auth(tenant))).json()
        assert keys["previous_key"] == secret and keys["key"] != secret
        await publish(p, billing_event(t))
        [_, rotated] = await wait_requests(receiver, 2)
        assert len(rotated.headers["webhook-signature"].split(" ")) == 2
        Webhook(keys["key"]).verify(rotated.body, rotated.headers)
        Webhook(secret).verify(rotated.body, rotated.headers)

        # observability
        async def both_recorded() -> list[dict[str, Any]] | None:
            r = await c.get(f"/v1/webhooks/endpoints/{ep}/messages", headers=auth(tenant))
            data: list[dict[str, Any]] = r.json()["data"]
            return data if all(m["status"] == "succeeded" for m in data) else None

        data = await wait_for(both_recorded, timeout_s=20)
        assert [m["event_id"] for m in data][1] == event.id  # newest first
        first = data[1]
        assert first["id"] == got.msg_id and first["attempts"] == 1
        r = await c.get(
            f"/v1/webhooks/endpoints/{ep}/messages/{first['id']}/attempts", headers=auth(tenant)
        )
        [a] = r.json()
        assert (a["status"], a["response_status"], a["response_body"]) == ("succeeded", 200, "ok")
        r = await c.get(f"/v1/webhooks/endpoints/{ep}/messages?limit=1", headers=auth(tenant))
        [newest] = r.json()["data"]
        before = r.json()["next_before"]
        r = await c.get(
            f"/v1/webhooks/endpoints/{ep}/messages?limit=1&before={before}", headers=auth(tenant)
        )
        assert [m["id"] for m in r.json()["data"]] == [first["id"]] != [newest["id"]]

        # resend: the same message again, same webhook-id
        r = await c.post(
            f"/v1/webhooks/endpoints/{ep}/messages/{first['id']}/resend", headers=auth(tenant)
        )
        await succeeded(c, tenant, r)
        [*_, again] = await wait_requests(receiver, 3)
        assert again.msg_id == got.msg_id and again.body == got.body

        # disable via the API; the event says so; delete
        r = await c.post(f"/v1/webhooks/endpoints/{ep}/disable", headers=auth(tenant))
        await succeeded(c, tenant, r)
        assert (await c.get(f"/v1/webhooks/endpoints/{ep}", headers=auth(tenant))).json()[
            "disabled_reason"
        ] == "manual"
        r = await c.delete(f"/v1/webhooks/endpoints/{ep}", headers=auth(tenant))
        await succeeded(c, tenant, r)
        assert (
            await c.get(f"/v1/webhooks/endpoints/{ep}", headers=auth(tenant))
        ).status_code == 404
        r = await c.post(f"/v1/webhooks/endpoints/{ep}/enable", headers=auth(tenant))
        assert r.status_code == 202
        status_url = r.json()["status_url"]

        async def outcome_of_enable() -> dict[str, Any] | None:
            body: dict[str, Any] = (await c.get(status_url, headers=auth(tenant))).json()
            return body if body["status"] != "pending" else None

        failed = await wait_for(outcome_of_enable, timeout_s=20)
        assert failed["status"] == "failed" and failed["error"]["code"] == "not_found"
        assert failed["error"]["field"] == "endpoint_id"

        events = await read_topic(wsettings, topics.EVENTS_WEBHOOKS, 4)
    assert [json.loads(e.value)["type"] for e in events] == [
        "webhook.endpoint_created",
        "webhook.secret_rotated",
        "webhook.endpoint_disabled",
        "webhook.endpoint_deleted",
    ]
    created = EndpointCreated.model_validate_json(
        next(e.value for e in events if b"endpoint_created" in e.value)
    )
    assert created.data.endpoint_id == ep and created.data.url == receiver.url()
    # the secrets are in no event, and in no log line
    everything = b"".join(e.value for e in events).decode()
    logs = capfd.readouterr()
    for s in (secret, keys["key"]):
        assert s not in everything and s.removeprefix("whsec_") not in everything
        assert s.removeprefix("whsec_") not in logs.out + logs.err


async def test_a_url_whose_host_ends_with_a_dot_registers_and_delivers(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver
) -> None:
    """``http://localhost.:PORT/`` is the fully qualified spelling of ``localhost``: it is
    kept as registered, and delivered to ``localhost`` (lookup, connection, Host header)."""
    t = tenant.tenant_id
    s = wsettings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8", "::1/128"]})
    urls = [f"http://localhost.:{receiver.port}/dot", f"http://127.0.0.1.:{receiver.port}/ip"]
    async with running(app.build(s)), ingress(s) as c, producer(s) as p:
        eps = []
        for url in urls:
            spec = {"url": url, "event_types": ["invoice.*"]}
            r = await c.post("/v1/webhooks/endpoints", json=spec, headers=auth(tenant))
            await succeeded(c, tenant, r)
            eps.append(r.json()["endpoint_id"])
            view = (await c.get(f"/v1/webhooks/endpoints/{eps[-1]}", headers=auth(tenant))).json()
            assert view["url"] == url
        await publish(p, billing_event(t))
        for ep in eps:
            await wait_message(sessions, t, ep, lambda m: m.status == "succeeded")
    [dot] = receiver.to("/dot")
    assert dot.headers["host"] == f"localhost:{receiver.port}"
    [ip] = receiver.to("/ip")
    assert ip.headers["host"] == f"127.0.0.1:{receiver.port}"

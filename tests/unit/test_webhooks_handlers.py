"""Webhooks' command table, fan-out handler and record step, run in memory (``MemoryTx``
with fake repositories): what they store, emit, answer and wake."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import topics
from schemas.envelope import AnyEvent
from schemas.webhooks import (
    CreateEndpoint,
    CreateEndpointData,
    DeleteEndpoint,
    EndpointRef,
    MessageRef,
    RecoverData,
    RecoverMessages,
    ResendMessage,
    RotateSecret,
    RotateSecretData,
    UpdateEndpoint,
    UpdateEndpointData,
    WebhooksCommand,
)
from storage.tenants import TenantRepository
from storage.webhooks import WebhookRepository
from workers.runtime.memory import MemoryTx, message
from workers.webhooks import handlers, jobs, service, ssrf
from workers.webhooks.commands import COMMANDS, Context
from workers.webhooks.domain import (
    AttemptResult,
    AttemptRow,
    Claimed,
    EndpointDef,
    EndpointFilter,
    EndpointSecrets,
    MessageUpdate,
    NewMessage,
    RetryPolicy,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
URL = "http://127.0.0.1:9/hook"
EP = "ep_" + "a" * 26
EP_X = "ep_" + "x" * 26  # no such endpoint of acme's
EP_B, EP_C, EP_D = ("ep_" + c * 26 for c in "bcd")


def msg(n: int) -> str:
    return "msg_" + "abcdefg"[n] * 26


class FakeTenants:
    def __init__(self, *tenants: str) -> None:
        self.tenants = set(tenants)

    async def existing(self, tenant_ids: set[str]) -> set[str]:
        return tenant_ids & self.tenants


class FakeWebhooks:
    """``WebhookRepository`` in memory: endpoints, messages and what was recorded."""

    def __init__(self, *endpoints: EndpointDef) -> None:
        self.endpoints = {(e.tenant_id, e.id): e for e in endpoints}
        self.secrets: dict[tuple[str, str], list[str]] = {k: ["whsec_old"] for k in self.endpoints}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.recorded: list[tuple[list[MessageUpdate], list[AttemptRow]]] = []
        self.disabled: list[tuple[str, str, str]] = []

    async def add_endpoint(
        self, endpoint: EndpointDef, secret: str, now: datetime
    ) -> EndpointDef | None:
        key = (endpoint.tenant_id, endpoint.id)
        if key in self.endpoints:
            return self.endpoints[key]
        self.endpoints[key] = dataclasses.replace(endpoint, created_at=now, updated_at=now)
        self.secrets[key] = [secret]
        return None

    async def get(self, tenant_id: str, endpoint_id: str) -> EndpointDef | None:
        return self.endpoints.get((tenant_id, endpoint_id))

    async def update(
        self, tenant_id: str, endpoint_id: str, changes: dict[str, Any], now: datetime
    ) -> tuple[EndpointDef, EndpointDef] | None:
        before = self.endpoints.get((tenant_id, endpoint_id))
        if before is None:
            return None
        after = dataclasses.replace(before, **changes, updated_at=now)
        self.endpoints[(tenant_id, endpoint_id)] = after
        return before, after

    async def rotate_secret(
        self, tenant_id: str, endpoint_id: str, new_secret: str, previous_expires_at: datetime
    ) -> bool:
        if (tenant_id, endpoint_id) not in self.endpoints:
            return False
        self.secrets[(tenant_id, endpoint_id)].append(new_secret)
        return True

    async def delete(self, tenant_id: str, endpoint_id: str) -> bool:
        self.secrets.pop((tenant_id, endpoint_id), None)
        return self.endpoints.pop((tenant_id, endpoint_id), None) is not None

    async def reschedule(
        self,
        tenant_id: str,
        endpoint_id: str,
        now: datetime,
        *,
        message_id: str | None = None,
        failed_since: datetime | None = None,
    ) -> int:
        n = 0
        for (t, _), m in self.messages.items():
            if (t, m["endpoint_id"]) != (tenant_id, endpoint_id):
                continue
            if message_id is not None and m["id"] != message_id:
                continue
            if failed_since is not None and not (
                m["status"] == "failed" and m["created_at"] >= failed_since
            ):
                continue
            m.update(status="pending", next_attempt_at=now)
            n += 1
        return n

    async def enabled_filters(self, tenant_ids: set[str]) -> list[EndpointFilter]:
        return [
            EndpointFilter(e.tenant_id, e.id, e.event_types, e.format)
            for e in sorted(self.endpoints.values(), key=lambda e: (e.tenant_id, e.id))
            if e.tenant_id in tenant_ids and e.enabled
        ]

    async def add_messages(self, messages: list[NewMessage]) -> int:
        for m in messages:
            self.messages[(m.tenant_id, m.id)] = {
                **dataclasses.asdict(m),
                "status": "pending",
                "created_at": m.next_attempt_at,
            }
        return len(messages)

    async def record(
        self,
        updates: list[MessageUpdate],
        attempts: list[AttemptRow],
        endpoints: set[tuple[str, str]],
    ) -> set[tuple[str, str]]:
        self.recorded.append((updates, attempts))
        return {(u.tenant_id, u.id) for u in updates}

    async def health(
        self,
        recovered: list[tuple[str, str]],
        failing: dict[tuple[str, str], tuple[datetime, bool]],
    ) -> None:
        for key, (since, _) in failing.items():
            self.endpoints[key] = dataclasses.replace(self.endpoints[key], failing_since=since)

    async def disable(
        self, endpoints: list[tuple[str, str]], reason: str, now: datetime
    ) -> list[tuple[str, str, datetime | None]]:
        out = []
        for key in endpoints:
            e = self.endpoints[key]
            if e.enabled:
                self.endpoints[key] = dataclasses.replace(e, enabled=False, disabled_reason=reason)
                self.disabled.append((*key, reason))
                out.append((*key, e.failing_since))
        return out


def endpoint(id: str = EP, tenant: str = "acme", **changes: Any) -> EndpointDef:
    e = EndpointDef(
        tenant_id=tenant, id=id, url=URL, description="", event_types=["invoice.*"],
        rate_limit_per_s=None, ordered=False, format="standard", enabled=True,
        disabled_reason=None, failing_since=None, created_at=T0, updated_at=T0,
    )  # fmt: skip
    return dataclasses.replace(e, **changes)


def context(woken: list[str]) -> Context:
    return Context(
        clock=lambda: T0,
        policy=ssrf.Policy.of(["127.0.0.0/8"]),
        secret_overlap=timedelta(hours=1),
        wake=lambda: woken.append("dispatcher"),
    )


async def run(
    command: WebhooksCommand, repo: FakeWebhooks, woken: list[str] | None = None
) -> MemoryTx:
    """``command`` through the commands consumer's handler, then committed."""
    tx = MemoryTx({WebhookRepository: repo})
    await handlers.on_command([message(command)], tx, context(woken if woken is not None else []))
    tx.commit()
    return tx


def outcome(tx: MemoryTx) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    [(_, o)] = tx.outcomes
    return o.status, o.result, o.error


def keys(tx: MemoryTx) -> list[tuple[str, bytes]]:
    return [(m.topic, m.key) for m in tx.outgoing]


def test_every_command_type_has_exactly_one_handler() -> None:
    assert set(COMMANDS) == {
        CreateEndpoint,
        UpdateEndpoint,
        RotateSecret,
        DeleteEndpoint,
        ResendMessage,
        RecoverMessages,
    }


# --- commands ----------------------------------------------------------------------------


async def test_create_stores_the_endpoint_with_a_fresh_secret_and_emits_endpoint_created() -> None:
    repo = FakeWebhooks()
    data = CreateEndpointData(url=URL, endpoint_id=EP, event_types=["invoice.*"])
    tx = await run(CreateEndpoint(source="tests", tenantid="acme", data=data), repo)
    assert outcome(tx) == ("succeeded", {"endpoint_id": EP}, None)
    stored = repo.endpoints[("acme", EP)]
    assert (stored.url, stored.event_types, stored.enabled, stored.created_at) == (
        URL,
        ["invoice.*"],
        True,
        T0,
    )
    [secret] = repo.secrets[("acme", EP)]
    assert secret.startswith("whsec_")
    [event] = tx.events
    assert (event["type"], event["subject"], event["data"]["url"]) == (
        "webhook.endpoint_created",
        EP,
        URL,
    )
    assert keys(tx) == [(topics.EVENTS_WEBHOOKS, f"acme:{EP}".encode())]


async def test_create_redelivered_is_a_no_op_and_another_definition_a_conflict() -> None:
    repo = FakeWebhooks(endpoint(event_types=["*"]))
    same = CreateEndpointData(url=URL, endpoint_id=EP, event_types=["*"])
    tx = await run(CreateEndpoint(source="tests", tenantid="acme", data=same), repo)
    assert outcome(tx) == ("succeeded", {"endpoint_id": EP}, None) and tx.events == []

    other = CreateEndpointData(url=URL + "2", endpoint_id=EP, event_types=["*"])
    tx = await run(CreateEndpoint(source="tests", tenantid="acme", data=other), repo)
    status, _, error = outcome(tx)
    assert (status, error and error["code"], error and error["field"]) == (
        "failed",
        "endpoint_conflict",
        "endpoint_id",
    )
    assert tx.events == [] and repo.endpoints[("acme", EP)].url == URL


async def test_create_refuses_an_unsafe_url_and_stores_nothing() -> None:
    repo = FakeWebhooks()
    data = CreateEndpointData(url="http://10.0.0.1/hook", endpoint_id=EP)
    tx = await run(CreateEndpoint(source="tests", tenantid="acme", data=data), repo)
    status, _, error = outcome(tx)
    assert (status, error and error["code"]) == ("failed", "unsafe_url")
    assert repo.endpoints == {} and tx.outgoing == []


async def test_enabling_an_endpoint_emits_updated_and_enabled_and_wakes_the_dispatcher() -> None:
    repo = FakeWebhooks(endpoint(enabled=False, disabled_reason="failing"))
    woken: list[str] = []
    data = UpdateEndpointData(endpoint_id=EP, enabled=True, description="billing")
    tx = await run(UpdateEndpoint(source="tests", tenantid="acme", data=data), repo, woken)
    assert outcome(tx) == ("succeeded", {"endpoint_id": EP}, None)
    after = repo.endpoints[("acme", EP)]
    assert (after.enabled, after.disabled_reason, after.description) == (True, None, "billing")
    assert [e["type"] for e in tx.events] == [
        "webhook.endpoint_updated",
        "webhook.endpoint_enabled",
    ]
    assert keys(tx) == [(topics.EVENTS_WEBHOOKS, f"acme:{EP}".encode())] * 2
    assert woken == ["dispatcher"]


async def test_disabling_an_endpoint_emits_endpoint_disabled_manual() -> None:
    repo = FakeWebhooks(endpoint())
    woken: list[str] = []
    data = UpdateEndpointData(endpoint_id=EP, enabled=False)
    tx = await run(UpdateEndpoint(source="tests", tenantid="acme", data=data), repo, woken)
    [event] = tx.events
    assert (event["type"], event["data"]["reason"]) == ("webhook.endpoint_disabled", "manual")
    assert repo.endpoints[("acme", EP)].disabled_reason == "manual" and woken == []


async def test_rotating_answers_when_the_previous_secret_expires() -> None:
    repo = FakeWebhooks(endpoint())
    cmd = RotateSecret(
        source="tests", tenantid="acme", data=RotateSecretData(endpoint_id=EP, overlap_s=600)
    )
    tx = await run(cmd, repo)
    # T0 + 600 s
    expires = "2026-11-22T10:10:00+00:00"
    assert outcome(tx) == (
        "succeeded",
        {"endpoint_id": EP, "previous_secret_expires_at": expires},
        None,
    )
    assert len(repo.secrets[("acme", EP)]) == 2
    [event] = tx.events
    assert event["type"] == "webhook.secret_rotated"
    assert datetime.fromisoformat(event["data"]["previous_secret_expires_at"]) == T0 + timedelta(
        seconds=600
    )

    default = RotateSecret(source="tests", tenantid="acme", data=RotateSecretData(endpoint_id=EP))
    _, result, _ = outcome(await run(default, repo))
    assert result == {"endpoint_id": EP, "previous_secret_expires_at": "2026-11-22T11:00:00+00:00"}


async def test_deleting_removes_the_endpoint_and_emits_endpoint_deleted() -> None:
    repo = FakeWebhooks(endpoint())
    cmd = DeleteEndpoint(source="tests", tenantid="acme", data=EndpointRef(endpoint_id=EP))
    tx = await run(cmd, repo)
    assert outcome(tx) == ("succeeded", {"endpoint_id": EP}, None)
    assert repo.endpoints == {}
    assert [e["type"] for e in tx.events] == ["webhook.endpoint_deleted"]


@pytest.mark.parametrize(
    "command",
    [
        UpdateEndpoint(
            source="tests",
            tenantid="acme",
            data=UpdateEndpointData(endpoint_id=EP_X, ordered=True),
        ),
        RotateSecret(source="tests", tenantid="acme", data=RotateSecretData(endpoint_id=EP_X)),
        DeleteEndpoint(source="tests", tenantid="acme", data=EndpointRef(endpoint_id=EP_X)),
        ResendMessage(
            source="tests", tenantid="acme", data=MessageRef(endpoint_id=EP_X, message_id=msg(3))
        ),
        RecoverMessages(
            source="tests", tenantid="acme", data=RecoverData(endpoint_id=EP_X, since=T0)
        ),
    ],
    ids=lambda c: c.type,
)
async def test_a_command_on_an_unknown_endpoint_fails_and_emits_nothing(
    command: WebhooksCommand,
) -> None:
    repo = FakeWebhooks(endpoint())  # not EP_X; another tenant's EP_X is not seen
    repo.endpoints[("globex", EP_X)] = endpoint(EP_X, "globex")
    woken: list[str] = []
    tx = await run(command, repo, woken)
    assert outcome(tx) == (
        "failed",
        None,
        {"code": "not_found", "message": f"no webhook endpoint {EP_X}", "field": "endpoint_id"},
    )
    assert tx.outgoing == [] and woken == []
    assert repo.endpoints[("globex", EP_X)] == endpoint(EP_X, "globex")


async def test_resend_makes_one_message_due_now_and_wakes_the_dispatcher() -> None:
    repo = FakeWebhooks(endpoint())
    repo.messages[("acme", msg(1))] = {
        "id": msg(1), "endpoint_id": EP, "status": "failed", "created_at": T0,
        "next_attempt_at": None,
    }  # fmt: skip
    woken: list[str] = []
    ref = MessageRef(endpoint_id=EP, message_id=msg(1))
    tx = await run(ResendMessage(source="tests", tenantid="acme", data=ref), repo, woken)
    assert outcome(tx) == ("succeeded", {"endpoint_id": EP, "message_id": msg(1)}, None)
    assert (repo.messages[("acme", msg(1))]["status"], woken) == ("pending", ["dispatcher"])

    missing = MessageRef(endpoint_id=EP, message_id=msg(2))
    tx = await run(ResendMessage(source="tests", tenantid="acme", data=missing), repo)
    assert outcome(tx) == (
        "failed",
        None,
        {
            "code": "not_found",
            "message": f"endpoint {EP} has no message {msg(2)}",
            "field": "message_id",
        },
    )


async def test_recover_reschedules_the_failed_messages_since_a_time() -> None:
    repo = FakeWebhooks(endpoint())
    for n, (status, created) in enumerate(
        [("failed", T0), ("failed", T0 - timedelta(days=1)), ("succeeded", T0)]
    ):
        repo.messages[("acme", msg(n))] = {
            "id": msg(n), "endpoint_id": EP, "status": status, "created_at": created,
        }  # fmt: skip
    woken: list[str] = []
    cmd = RecoverMessages(
        source="tests", tenantid="acme", data=RecoverData(endpoint_id=EP, since=T0)
    )
    tx = await run(cmd, repo, woken)
    assert outcome(tx) == ("succeeded", {"endpoint_id": EP, "recovered": 1}, None)
    assert [m["status"] for m in repo.messages.values()] == ["pending", "failed", "succeeded"]
    assert woken == ["dispatcher"] and tx.events == []


# --- fan-out ----------------------------------------------------------------------------


def event(type: str, tenant: str = "acme", id: str = "ev-1") -> AnyEvent:
    """An event as read off an events topic (any tenant id a producer may write)."""
    raw = {
        "specversion": "1.0", "id": id, "source": "tests/invoicing", "type": type,
        "time": T0.isoformat(), "tenantid": tenant, "data": {"n": 1},
    }  # fmt: skip
    return handlers.decode_event(json.dumps(raw).encode())


async def test_an_event_becomes_one_message_per_matching_endpoint_of_its_tenant() -> None:
    everything = endpoint(EP_B, event_types=["*"])
    meters = endpoint(EP_C, event_types=["meter.created"])
    off = endpoint(EP_D, event_types=["*"], enabled=False)
    foreign = endpoint(EP_X, "globex", event_types=["*"])
    repo = FakeWebhooks(endpoint(), everything, meters, off, foreign)
    tx = MemoryTx({WebhookRepository: repo, TenantRepository: FakeTenants("acme", "globex")})
    woken: list[str] = []
    invoice = message(event("invoice.finalized"), topic=topics.EVENTS_INVOICING)
    await handlers.on_events([invoice], tx, context(woken))
    assert woken == []  # only once committed
    tx.commit()
    stored = sorted(repo.messages.values(), key=lambda m: m["endpoint_id"])
    assert [(m["endpoint_id"], m["event_id"], m["next_attempt_at"]) for m in stored] == [
        (EP, "ev-1", T0),
        (EP_B, "ev-1", T0),
    ]
    assert {m["id"] for m in stored} == {
        service.message_id(EP_B, "tests/invoicing", "ev-1"),
        service.message_id(EP, "tests/invoicing", "ev-1"),
    }
    assert all(m["payload"] == invoice.record.value for m in stored)  # the bytes, unchanged
    assert woken == ["dispatcher"] and tx.outgoing == []

    # redelivered: the inbox drops it, nothing new, nobody woken
    await handlers.on_events([invoice], tx, context(woken))
    tx.commit()
    assert len(repo.messages) == 2 and woken == ["dispatcher"]


async def test_events_nobody_wants_or_of_no_tenant_are_skipped_not_dead_lettered() -> None:
    repo = FakeWebhooks(endpoint())
    tx = MemoryTx({WebhookRepository: repo, TenantRepository: FakeTenants("acme")})
    woken: list[str] = []
    batch = [
        message(event("usage.totals_changed", id="ev-1")),  # no filter matches
        message(event("invoice.finalized", tenant="*", id="ev-2")),  # no tenant
        message(event("invoice.finalized", tenant="nobody", id="ev-3")),  # unknown tenant
    ]
    await handlers.on_events(batch, tx, context(woken))
    tx.commit()
    assert repo.messages == {} and tx.inbox == set() and woken == []
    assert tx.dead_letters == [] and tx.outgoing == []


# --- recording outcomes -----------------------------------------------------------------


def claimed(
    endpoint_id: str, id: str, *, attempts: int = 0, event_type: str = "invoice.paid"
) -> Claimed:
    return Claimed(
        tenant_id="acme", id=id, endpoint_id=endpoint_id, event_id=f"ev-{id}",
        event_type=event_type, payload=b"{}", attempts=attempts, cycle_attempts=attempts,
        lease_token="lease-1", url=URL, secrets=EndpointSecrets("whsec_x", None, None),
        rate_limit_per_s=None, failing_since=None,
    )  # fmt: skip


async def test_recording_emits_message_failed_and_endpoint_disabled_keyed_by_endpoint() -> None:
    repo = FakeWebhooks(endpoint(EP_B), endpoint(EP_C), endpoint(EP_D))
    tx = MemoryTx({WebhookRepository: repo})
    policy = RetryPolicy(schedule=(5,), jitter=0.0)  # two attempts in all
    at = T0 + timedelta(seconds=1)
    batch = [
        # its second and last attempt fails: the message fails
        jobs.Attempted(claimed(EP_B, "m1", attempts=1), AttemptResult(at, 12, status_code=500)),
        # 410 Gone: the endpoint is disabled at once
        jobs.Attempted(claimed(EP_C, "m2"), AttemptResult(at, 7, status_code=410)),
        # deferred by the rate limit for 2.5 s: no attempt
        jobs.Attempted(claimed(EP_D, "m3"), None, until_s=2.5),
    ]
    applied = await jobs.record(tx, batch, policy, random.Random(1), T0 + timedelta(seconds=2))
    assert applied == 3
    [(updates, attempts)] = repo.recorded
    assert [(u.id, u.status, u.counted, u.next_attempt_at) for u in updates] == [
        ("m1", "failed", True, None),
        ("m2", "pending", True, at + timedelta(seconds=5)),
        ("m3", "pending", False, T0 + timedelta(seconds=4.5)),  # T0 + 2 s + 2.5 s
    ]
    assert [(a.message_id, a.status, a.response_status, a.error) for a in attempts] == [
        ("m1", "failed", 500, "HTTP 500"),
        ("m2", "failed", 410, "HTTP 410"),
    ]
    assert repo.disabled == [("acme", EP_C, "gone")]
    assert [(e["type"], e["subject"]) for e in tx.events] == [
        ("webhook.endpoint_disabled", EP_C),
        ("webhook.message_failed", EP_B),
    ]
    failed = tx.events[1]["data"]
    assert (failed["message_id"], failed["attempts"], failed["last_response_status"]) == (
        "m1",
        2,
        500,
    )
    assert keys(tx) == [
        (topics.EVENTS_WEBHOOKS, f"acme:{EP_C}".encode()),
        (topics.EVENTS_WEBHOOKS, f"acme:{EP_B}".encode()),
    ]


async def test_a_failed_message_about_webhooks_makes_no_further_event() -> None:
    repo = FakeWebhooks(endpoint(EP_B))
    tx = MemoryTx({WebhookRepository: repo})
    about_webhooks = claimed(EP_B, "m1", attempts=1, event_type="webhook.endpoint_disabled")
    result = AttemptResult(T0, 3, error="connection refused")
    policy = RetryPolicy(schedule=(5,), jitter=0.0)
    await jobs.record(tx, [jobs.Attempted(about_webhooks, result)], policy, random.Random(1), T0)
    [(updates, attempts)] = repo.recorded
    assert updates[0].status == "failed" and attempts[0].error == "connection refused"
    assert tx.outgoing == []

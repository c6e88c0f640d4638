"""Dedupe keys are unambiguous (finding 4 of issue 12), through the real workers, the
real broker and real PostgreSQL; and a message applied before migration 0011 is still a
duplicate after it.

A source or id may contain U+001F, the separator inbox keys and webhook message ids were
joined with: (source ``a␟b``, id ``c``) and (source ``a``, id ``b␟c``) were one message,
so the second was silently dropped."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from schemas import topics
from schemas.groups import METERING_USAGE as USAGE_GROUP
from storage import inbox
from storage.db import create_engine, migrate, session_factory
from storage.webhooks import EndpointFilter, WebhookRepository
from tests.conftest import PgServer, TenantKey, make_tenant
from tests.integration.support import (
    Sessions,
    inbox_count,
    insert_meters,
    producer,
    read_all,
    running,
    send_raw,
    send_usage,
    total,
    usage,
    wait_committed_to_end,
    wait_outbox_drained,
)
from tests.integration.test_webhooks import add_endpoint
from workers.metering.app import build
from workers.settings import Settings
from workers.webhooks import service

US = "\x1f"
COLLIDING = [(f"a{US}b", "c"), ("a", f"b{US}c")]  # (source, id): one joined string
CALLS = [{"key": "calls", "event_type": "api.call", "aggregation": "count"}]


def legacy_key(tenant: str, source: str, id: str) -> bytes:
    """The inbox key every version before 0011 wrote."""
    return hashlib.blake2b(f"{tenant}{US}{source}{US}{id}".encode(), digest_size=16).digest()


async def test_the_colliding_pair_is_two_messages_for_inbox_claim(sessions: Sessions) -> None:
    keys = [inbox.message_key("acme", s, i) for s, i in COLLIDING]
    async with sessions() as session, session.begin():
        assert len(await inbox.claim(session, "g", keys)) == 2  # both applied
        assert await inbox.claim(session, "g", keys) == set()  # and each dedupes


async def test_neither_of_the_colliding_pair_is_lost_by_the_metering_worker(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """Each is counted once, or (where the envelope refuses U+001F at the door) dead-lettered
    with its reason: never taken for the other and silently dropped."""
    meters = await insert_meters(sessions, "acme", CALLS)
    events = [raw_usage(s, i) for s, i in COLLIDING]
    async with running(build(settings)), producer(settings) as p:
        for value in [*events, *events]:  # each one redelivered too
            await send_raw(p, topics.USAGE, value, b"acme:cust-1")
        await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)
        await wait_outbox_drained(sessions)
    dead, _ = await read_all(settings, topics.dlq(topics.USAGE))
    refused = {(e["source"], e["id"]) for e in (json.loads(r.value) for r in dead)}
    counted = await total(sessions, meters["calls"]) or 0
    assert counted + len(refused) == 2, (counted, refused)
    assert await inbox_count(sessions, USAGE_GROUP) == counted


def raw_usage(source: str, id: str) -> bytes:
    """A usage event as a Kafka-native producer writes it (not validated on our side)."""
    event = {
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": "api.call",
        "time": "2025-03-01T10:00:00+00:00",
        "subject": "cust-1",
        "datacontenttype": "application/json",
        "tenantid": "acme",
        "data": {},
    }
    return json.dumps(event).encode()


# --- across the upgrade ---------------------------------------------------------------


@pytest.fixture
async def at_0010(pg_server: PgServer) -> AsyncIterator[str]:
    """A database migrated only up to 0010 (the version before unambiguous keys)."""
    name = f"bs_0010_{uuid.uuid4().hex[:12]}"
    url = await pg_server.create_database(name)
    await migrate(url, "0010")
    yield url
    await pg_server.drop_database(name)


async def test_a_message_applied_before_0011_is_still_a_duplicate_after_it(
    settings: Settings, at_0010: str
) -> None:
    engine = create_engine(at_0010, pool_size=2)
    old_sessions = session_factory(engine)
    try:
        await make_tenant(old_sessions, "acme")
        # what workers before 0011 left in the inbox: an ordinary message, and one whose
        # source holds the separator, each applied under its old key
        async with old_sessions() as session, session.begin():
            await insert_inbox_row(session, USAGE_GROUP, legacy_key("acme", "tests", "e-old"))
            await insert_inbox_row(session, "g", legacy_key("acme", *COLLIDING[0]))

        await migrate(at_0010)  # to head, 0011 included
        meters = await insert_meters(old_sessions, "acme", CALLS)
        upgraded = settings.model_copy(update={"database_url": at_0010})
        async with running(build(upgraded)), producer(upgraded) as p:
            # redelivered after the upgrade, then a message never seen
            await send_usage(p, [usage("acme", "e-old", source="tests")])
            await send_usage(p, [usage("acme", "e-new", source="tests")])
            await wait_committed_to_end(upgraded, USAGE_GROUP, topics.USAGE)
        assert await total(old_sessions, meters["calls"]) == 1  # e-new alone
        assert await inbox_count(old_sessions, USAGE_GROUP) == 2

        # the key of the separator message changed in 0011: its old one is looked up too
        # (in one statement with one never seen, which is applied)
        keys, legacy = inbox.keys_of([Ident("acme", *COLLIDING[0]), Ident("acme", f"x{US}y", "z")])
        assert legacy == {
            keys[0]: legacy_key("acme", *COLLIDING[0]),
            keys[1]: legacy_key("acme", f"x{US}y", "z"),
        }
        async with old_sessions() as session, session.begin():
            assert await inbox.claim(session, "g", keys, legacy) == {keys[1]}
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Ident:
    """A message identity the envelope may refuse (it reaches the inbox API only)."""

    tenantid: str
    source: str
    id: str


async def insert_inbox_row(session: AsyncSession, consumer: str, key: bytes) -> None:
    await session.execute(
        text("INSERT INTO inbox (consumer, message_key) VALUES (:c, :k)"),
        {"c": consumer, "k": key},
    )


# --- webhooks --------------------------------------------------------------------------


async def test_the_colliding_pair_is_two_webhook_messages_with_two_webhook_ids(
    sessions: Sessions, tenant: TenantKey
) -> None:
    endpoint_id = await add_endpoint(sessions, "acme", "https://example.com/hook")
    endpoint = EndpointFilter("acme", endpoint_id, ["*"])
    refs = [
        service.EventRef("acme", i, s, "invoice.finalized", "cust-1", b"{}") for s, i in COLLIDING
    ]
    now = datetime.now(UTC)
    new = service.fan_out(refs, [endpoint], now)
    async with sessions() as session, session.begin():
        repo = WebhookRepository(session)
        assert await repo.add_messages(new) == 2
        assert await repo.add_messages(service.fan_out(refs, [endpoint], now)) == 0  # redelivery
        rows = await repo.messages("acme", endpoint.id)
    assert sorted(m.event_id for _, m in rows) == sorted(i for _, i in COLLIDING)
    assert len({m.id for _, m in rows}) == 2

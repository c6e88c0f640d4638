"""The ``billstream`` commands an operator runs, as subprocesses against real components."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.catalog import CATALOG, schema_file_name
from schemas.topics import all_topic_names
from storage.tenants import TenantRepository
from tests.conftest import KafkaServer, PgServer
from workers.devstack import EmbeddedKafka
from workers.runtime.topics import admin_client


async def billstream(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", *args,
        env={**os.environ, "BILLSTREAM_LOG_LEVEL": "WARNING", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_migrate_creates_the_schema_and_is_idempotent(pg_server: PgServer) -> None:
    url = await pg_server.create_database(f"bs_cli_{uuid.uuid4().hex[:8]}")
    for _ in range(2):
        code, out, err = await billstream("migrate", BILLSTREAM_DATABASE_URL=url)
        assert code == 0, err
        assert "database migrated to head" in out


async def test_topics_ensure_creates_every_topic_once(tmp_path: Path) -> None:
    with EmbeddedKafka(log_path=tmp_path / "broker.log") as broker:
        env = {"BILLSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "BILLSTREAM_TOPIC_PARTITIONS": "2"}
        code, out, err = await billstream("topics", "ensure", **env)
        assert code == 0, err
        assert "created billstream.usage.v1.dlq" in out
        assert f"\n{len(all_topic_names())} topic(s) created" in f"\n{out}"
        code, out, _ = await billstream("topics", "ensure", **env)
        assert code == 0 and "\n0 topic(s) created" in f"\n{out}"
        client = await admin_client(broker.bootstrap)
        try:
            (usage,) = await client.describe_topics(["billstream.usage.v1"])
            assert len(usage["partitions"]) == 2
        finally:
            await client.close()


async def test_tenant_create_prints_a_key_that_authenticates(
    database_url: str, sessions: async_sessionmaker[AsyncSession], kafka: KafkaServer
) -> None:
    code, out, err = await billstream(
        "tenant", "create", "globex", BILLSTREAM_DATABASE_URL=database_url
    )
    assert code == 0, err
    assert "tenant globex created" in out
    key = out.split("api key: ", 1)[1].strip()
    async with sessions() as session:
        assert await TenantRepository(session).authenticate(key) == "globex"
    code, out, _ = await billstream(
        "tenant", "create", "globex", BILLSTREAM_DATABASE_URL=database_url
    )
    assert code == 0 and "tenant globex exists" in out  # a second key for the same tenant

    code, _, err = await billstream("tenant", "create", "Not_A_Slug")
    assert code == 2 and "tenant id must match" in err


async def test_schemas_export_writes_a_json_schema_per_message(tmp_path: Path) -> None:
    code, _, err = await billstream("schemas", "export", "--out", str(tmp_path))
    assert code == 0, err
    files = sorted(tmp_path.rglob("*.schema.json"))  # noqa: ASYNC240 (a test, after the fact)
    assert [str(f.relative_to(tmp_path)) for f in files] == sorted(
        schema_file_name(spec) for spec in CATALOG
    )
    usage = json.loads((tmp_path / "billstream.usage.v1/usage-event.v1.schema.json").read_text())
    assert {"id", "source", "type", "subject", "time", "tenantid"} <= set(usage["required"])


async def test_unknown_worker_is_refused() -> None:
    code, _, err = await billstream("worker", "nope")
    assert code == 2 and "unknown worker 'nope'" in err


async def test_a_worker_logs_one_quiet_format_from_start_to_stop(
    database_url: str, kafka: KafkaServer
) -> None:
    """JSON lines only (ours and the libraries'), no colour codes, no partition assignments
    or faststream task callbacks at INFO; SIGTERM stops it cleanly."""
    env = {
        **os.environ,
        "BILLSTREAM_DATABASE_URL": database_url,
        "BILLSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BILLSTREAM_KAFKA_IDEMPOTENCE": str(not kafka.embedded).lower(),
        "BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS": "2000" if kafka.embedded else "10000",
        "BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "300" if kafka.embedded else "3000",
        "BILLSTREAM_LOG_LEVEL": "INFO",
        "BILLSTREAM_LOG_FORMAT": "json",
        "BILLSTREAM_METRICS_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", "worker", "metering", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("worker started" in line for line in lines):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(lines)  # exited before it started
                lines.append(line)
    finally:
        proc.terminate()
        _, rest = await asyncio.wait_for(proc.communicate(), timeout=60)
    lines += rest.decode().splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)
    text = "".join(lines)
    assert "\x1b[" not in text
    assert "assigned to partitions" not in text and "is being executed" not in text
    records = [json.loads(line) for line in lines if line.strip()]
    assert [r["event"] for r in records if r["event"].startswith("worker ")] == [
        "worker started",
        "worker stopping",
        "worker stopped",
    ]
    assert all(r["level"] in ("info", "warning") for r in records), text

"""The operations commands as an operator runs them: exit codes, errors naming the option,
``--json`` output."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from schemas import topics
from tests.conftest import TenantKey
from tests.integration.support import producer, send_usage, usage
from workers.settings import Settings


async def billstream(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "BILLSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BILLSTREAM_DATABASE_URL": settings.database_url,
        "BILLSTREAM_KAFKA_IDEMPOTENCE": str(settings.kafka_idempotence).lower(),
        "BILLSTREAM_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_replay_and_dlq_commands_exit_codes_errors_and_json(
    settings: Settings, tenant: TenantKey
) -> None:
    async with producer(settings) as p:
        await send_usage(p, [usage("acme", f"e{i}", subject=f"c{i}") for i in range(4)])
    usage_topic = topics.USAGE
    dry, to_with_group, no_topic, dlq_list, redrive_nothing = await asyncio.gather(
        billstream(
            settings, "replay", "--topic", usage_topic, "--from", "earliest", "--into",
            usage_topic, "--tenant", "acme", "--reason", "check", "--dry-run", "--json",
        ),
        billstream(
            settings, "replay", "--topic", usage_topic, "--from", "0", "--to", "5", "--group",
            "billstream.metering", "--reason", "x",
        ),
        billstream(
            settings, "replay", "--topic", "nope", "--from", "0", "--into", usage_topic,
            "--reason", "x",
        ),
        billstream(settings, "dlq", "list", "billstream.usage.v1", "--json"),
        billstream(settings, "dlq", "redrive", "billstream.usage.v1", "--reason", "x"),
    )  # fmt: skip

    code, out, err = dry
    assert code == 0, err
    result = json.loads(out)
    assert (result["records"], result["matched"], result["published"]) == (4, 4, 0)
    assert result["dry_run"] is True and result["audit_id"] is None

    code, _, err = to_with_group
    assert code == 2 and "--to: a group reset re-reads everything" in err

    code, _, err = no_topic
    assert code == 1 and "--topic: topic 'nope' does not exist" in err

    code, out, err = dlq_list
    assert code == 0, err
    assert json.loads(out) == []

    code, _, err = redrive_nothing
    assert code == 2 and "--record: select what to redrive" in err

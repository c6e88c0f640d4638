"""``billstream dlq``: list dead letters with their error headers, show one, and redrive
after a fix. A fixed message is applied; one that still fails comes back to the DLQ once
and is not redriven again past the limit: no loop."""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas import groups, topics
from schemas.ops import OpsRedriven
from tests.conftest import TenantKey
from tests.integration.support import (
    Sessions,
    headers,
    insert_meters,
    producer,
    read_all,
    read_topic,
    running,
    send_usage,
    total,
    usage,
    wait_committed_to_end,
)
from workers.devstack import wait_for
from workers.metering.app import build
from workers.ops import dlq
from workers.ops.errors import UsageError
from workers.settings import Settings

DLQ = topics.dlq(topics.USAGE)
TOKENS = {
    "key": "tokens",
    "event_type": "llm.completion",
    "aggregation": "sum",
    "value_property": "$.tokens",
}


async def test_redrive_applies_a_fixed_message_and_a_still_broken_one_comes_back_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    settings = settings.model_copy(update={"dlq_max_redrives": 1})
    fixable = usage("acme", "ok-1", type="llm.completion", data={"tokens": 5})
    broken = usage("acme", "bad-1", type="llm.completion", data={"tokens": "many"})
    async with running(build(settings)), producer(settings) as p:
        await send_usage(p, [fixable, broken])
        await read_topic(settings, DLQ, 2)  # no meter reads llm.completion yet

        found = await dlq.entries(settings, DLQ)
        assert [(e.event["id"], e.error, e.redriven_at) for e in found] == [
            ("ok-1", "unusable_event", None),
            ("bad-1", "unusable_event", None),
        ]  # same key, so one partition, in order
        first = found[0]
        assert first.original_topic == topics.USAGE and first.group == groups.METERING_USAGE
        assert "no meter reads event type 'llm.completion'" in (first.reason or "")
        shown = await dlq.show(settings, DLQ, first.partition, first.offset)
        assert shown.detail()["value"]["id"] == first.event["id"]
        assert shown.detail()["headers"]["billstream-dlq-offset"] == str(first.original_offset)

        everything = dlq.Selection(all=True)
        dry = await dlq.redrive(
            settings, DLQ, everything, actor="bob", reason="meter created", dry_run=True
        )
        assert len(dry.chosen) == 2 and dry.redriven == 0 and dry.audit_id is None

        # the fix: a meter now reads llm.completion
        meters = await insert_meters(sessions, "acme", [TOKENS])
        result = await dlq.redrive(settings, DLQ, everything, actor="bob", reason="meter created")
        assert result.redriven == 2 and result.audit_id is not None

        await wait_for(lambda: total(sessions, meters["tokens"]), timeout_s=15)
        assert await total(sessions, meters["tokens"]) == Decimal(5)
        # the still-broken one is dead-lettered again, with its redrive count
        dead = await read_topic(settings, DLQ, 3)
        again = dead[-1]  # same key: the same DLQ partition, after the first two
        again_headers = headers(again)
        assert b'"bad-1"' in again.value
        assert again_headers["billstream-redrive-count"] == "1"
        assert "not a number" in again_headers["billstream-dlq-reason"]
        assert again_headers["billstream-redrive-of"].startswith(f"{DLQ}/")

        # the redriven records on the usage topic: original headers, redrive marks, no dlq-*
        records, _ = await read_all(settings, topics.USAGE)
        redriven = [headers(r) for r in records if "billstream-redrive-id" in headers(r)]
        assert len(redriven) == 2
        assert all(h["billstream-redrive-id"] == result.audit_id for h in redriven)
        assert not any(k.startswith("billstream-dlq-") for h in redriven for k in h)

        # redriving everything again: the two are done, the one that came back is at its
        # limit (1): nothing is published, so a broken message cannot loop
        second = await dlq.redrive(settings, DLQ, everything, actor="bob", reason="again")
        assert second.redriven == 0 and second.audit_id is None
        why = sorted(s.why.split(" at ")[0].split(" (")[0] for s in second.skipped)
        assert why == ["already redriven", "already redriven", "redriven 1 times already"]
        await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
        assert len((await read_all(settings, DLQ))[0]) == 3

        listed = await dlq.entries(settings, DLQ)
        assert sum(e.redriven_at is not None for e in listed) == 2

    audit = await read_topic(settings, topics.EVENTS_OPS, 1)
    event = OpsRedriven.model_validate_json(audit[0].value)
    assert (event.data.actor, event.data.reason, event.data.dlq_topic) == (
        "bob",
        "meter created",
        DLQ,
    )
    assert {r.error for r in event.data.records} == {"unusable_event"}


async def test_redrive_needs_a_selection_and_names_unknown_records(settings: Settings) -> None:
    with pytest.raises(UsageError) as e:
        await dlq.redrive(settings, DLQ, dlq.Selection(), actor="x", reason="y")
    assert e.value.option == "--record"
    with pytest.raises(UsageError, match="no record 0:7"):
        await dlq.redrive(settings, DLQ, dlq.Selection(records=((0, 7),)), actor="x", reason="y")

"""The in-memory unit of work the handler unit tests use behaves like the real ``Tx``."""

from __future__ import annotations

import pytest

from schemas.envelope import CloudEvent
from workers.runtime.errors import PermanentError
from workers.runtime.memory import MemoryTx, message


class Ping(CloudEvent):
    type: str = "test.ping"
    data: dict[str, int] = {}


def ping(id: str, tenant: str = "acme") -> CloudEvent:
    return Ping(id=id, source="test", tenantid=tenant, data={"n": 1})


async def test_a_message_is_claimed_once_and_unknown_tenants_are_dead_lettered() -> None:
    tx = MemoryTx(tenants={"acme"})
    batch = [message(ping("a")), message(ping("a")), message(ping("b", "nobody"))]
    fresh = await tx.claim(batch)
    assert [m.event.id for m in fresh] == ["a"]
    assert tx.duplicates == 1 and tx.rejected == 1
    assert [topic for topic, _ in tx.dead_letters] == ["test.dlq"]
    assert await tx.claim([message(ping("a"))]) == []  # the inbox outlives the batch


async def test_a_failed_command_publishes_nothing_and_records_why() -> None:
    tx = MemoryTx()
    async with tx.command(message(ping("ok"))) as result:
        tx.emit(ping("e1"), topic="t", key="acme")
        result["n"] = 1
    async with tx.command(message(ping("bad"))):
        tx.emit(ping("e2"), topic="t", key="acme")
        raise PermanentError("no such plan", field="plan_id")
    assert [e["id"] for e in tx.events] == ["e1"]
    assert [(o.status, o.result, o.error) for _, o in tx.outcomes] == [
        ("succeeded", {"n": 1}, None),
        ("failed", None, {"code": "permanent", "message": "no such plan", "field": "plan_id"}),
    ]


async def test_after_commit_callbacks_run_on_commit_only() -> None:
    tx = MemoryTx()
    woken: list[str] = []
    tx.after_commit(lambda: woken.append("dispatcher"))
    assert woken == []
    tx.commit()
    assert woken == ["dispatcher"]


def test_handlers_cannot_reach_for_the_session_or_an_unregistered_repository() -> None:
    tx = MemoryTx()
    with pytest.raises(AssertionError, match=r"tx\.repo"):
        tx.session.execute  # noqa: B018
    with pytest.raises(AssertionError, match="no fake registered for dict"):
        tx.repo(dict)  # type: ignore[arg-type]

"""The alerts HTTP API: real ingress (uvicorn), real broker and PostgreSQL.

Writes must land as commands on ``billstream.commands.alerts.v1`` (no alerts worker runs
here: the commands stay pending); reads come from rows put straight into the database
through ``AlertsRepository``, as the alerts worker would write them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from schemas import topics
from schemas.alerts import CreateAlertRule, RuleSpec
from storage.alerts import AlertsRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client, ingress
from tests.integration.support import Sessions, read_topic
from workers.alerts.service import Alert, RuleDef, new_rule, usage_alerts
from workers.settings import Settings

T = datetime(2031, 10, 5, 12, 0, tzinfo=UTC)
PERIOD = (datetime(2031, 10, 1, tzinfo=UTC), datetime(2031, 11, 1, tzinfo=UTC))
HOUR = timedelta(hours=1)

TOKENS_80 = {
    "key": "tokens-80",
    "name": "Tokens at 80% of the plan",
    "rule": {
        "kind": "usage_threshold",
        "meter": "tokens",
        "unit": "percent_of_included",
        "thresholds": ["100", "80"],
    },
}


@pytest.fixture
async def api(settings: Settings, tenant: TenantKey) -> AsyncIterator[Client]:
    async with ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield Client(http, tenant)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    return body


async def commands(settings: Settings, count: int) -> list[tuple[bytes | None, dict[str, Any]]]:
    """The commands on the alerts topic, in order (keyed by tenant: one partition)."""
    records = await read_topic(settings, topics.COMMANDS_ALERTS, count)
    assert len({r.partition for r in records}) <= 1
    return [(r.key, json.loads(r.value)) for r in records]


async def add_rule(sessions: Sessions, tenant: str, spec: dict[str, Any]) -> RuleDef:
    command = CreateAlertRule(source="tests", tenantid=tenant, data=RuleSpec.model_validate(spec))
    async with sessions() as session, session.begin():
        repo = AlertsRepository(session)
        assert await repo.add_rule(new_rule(command)) is None
        rule = await repo.rule(tenant, spec["key"])
    assert rule is not None
    return rule


async def raise_alerts(sessions: Sessions, alerts: list[Alert]) -> None:
    async with sessions() as session, session.begin():
        assert len(await AlertsRepository(session).raise_alerts(alerts)) == len(alerts)


# --- writes ------------------------------------------------------------------------


async def test_each_write_publishes_its_command_keyed_by_tenant_and_answers_202(
    api: Client, settings: Settings
) -> None:
    tenant = api.key.tenant_id
    r = await api.send("POST", "/v1/alert-rules", TOKENS_80)
    assert r.status_code == 202, r.text
    created = r.json()
    assert r.headers["location"] == created["status_url"] == f"/v1/commands/{created['command_id']}"
    status = await api.get(created["status_url"])
    assert (status["type"], status["status"]) == ("CreateAlertRule", "pending")

    alert_id = "al_" + "0" * 32
    writes = [
        ("DELETE", "/v1/alert-rules/tokens-80", None),
        ("POST", f"/v1/alerts/{alert_id}/acknowledge", {"note": "looking into it"}),
        ("POST", f"/v1/alerts/{alert_id}/resolve", None),  # the body is optional
    ]
    ids = [created["command_id"]]
    for method, path, body in writes:
        r = await api.send(method, path, body)
        assert r.status_code == 202, (path, r.text)
        ids.append(r.json()["command_id"])

    sent = await commands(settings, 4)
    assert [key for key, _ in sent] == [tenant.encode()] * 4
    assert [c["id"] for _, c in sent] == ids
    assert [c["type"] for _, c in sent] == [
        "CreateAlertRule",
        "DeleteAlertRule",
        "AcknowledgeAlert",
        "ResolveAlert",
    ]
    assert {c["tenantid"] for _, c in sent} == {tenant}
    assert [c["subject"] for _, c in sent] == ["tokens-80", "tokens-80", alert_id, alert_id]
    assert RuleSpec.model_validate(sent[0][1]["data"]) == RuleSpec.model_validate(TOKENS_80)
    assert sent[0][1]["data"]["rule"]["thresholds"] == ["80", "100"]  # sorted, exact strings
    assert sent[1][1]["data"] == {"key": "tokens-80"}
    assert sent[2][1]["data"] == {"alert_id": alert_id, "note": "looking into it"}
    assert sent[3][1]["data"].get("note") is None
    assert sent[3][1]["data"]["alert_id"] == alert_id


async def test_an_invalid_rule_is_refused_naming_the_field_and_nothing_is_published(
    api: Client, settings: Settings
) -> None:
    usage: dict[str, Any] = {"kind": "usage_threshold", "meter": "tokens"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"key": "r", "rule": usage}, "rule.usage_threshold"),  # neither thresholds nor every
        (
            {"key": "r", "rule": usage | {"unit": "percent_of_included", "thresholds": ["-80"]}},
            "rule.usage_threshold.thresholds[0]",
        ),
        ({"key": "r", "rule": usage | {"thresholds": [80.5]}},
         "rule.usage_threshold.thresholds[0]"),
        ({"key": "r", "rule": usage | {"thresholds": ["0"]}}, "rule.usage_threshold.thresholds"),
        ({"key": "r", "rule": {"kind": "nope"}}, "rule"),
        ({"key": "r", "rule": {"kind": "anomaly", "meter": "tokens", "factor": "0.5"}},
         "rule.anomaly.factor"),
        ({"key": "r", "rule": {"kind": "operational", "condition": "boom"}},
         "rule.operational.condition"),
        ({"key": "r", "rule": {"kind": "spend_threshold", "currency": "XYZ", "thresholds": [5]}},
         "rule.spend_threshold.currency"),
        ({"key": "Not A Slug", "rule": usage | {"thresholds": ["10"]}}, "key"),
        ({"key": "r", "rule": usage | {"thresholds": ["10"]}, "colour": "red"}, "colour"),
    ]  # fmt: skip
    for body, field in cases:
        p = problem(await api.send("POST", "/v1/alert-rules", body), 422)
        assert field in {e["field"] for e in p["errors"]}, (body, p)

    bad_ids: list[tuple[str, str, dict[str, str] | None, str]] = [
        ("POST", "/v1/alerts/al_nothex/acknowledge", None, "alert_id"),
        ("POST", f"/v1/alerts/al_{'0' * 32}/resolve", {"note": "x" * 1025}, "note"),
        ("POST", f"/v1/alerts/al_{'0' * 32}/resolve", {"reason": "x"}, "reason"),
        ("DELETE", "/v1/alert-rules/Not%20A%20Slug", None, "key"),
    ]
    for method, path, note, field in bad_ids:
        p = problem(await api.send(method, path, note), 422)
        assert field in {e["field"] for e in p["errors"]}, (path, p)

    # the only command on the topic is the valid one sent after all of the above
    r = await api.send(
        "POST", "/v1/alert-rules", {"key": "r", "rule": usage | {"thresholds": [10]}}
    )
    assert r.status_code == 202, r.text
    [(_, command)] = await commands(settings, 1)
    assert command["id"] == r.json()["command_id"]


# --- reads: rules ------------------------------------------------------------------


async def test_rules_are_listed_and_read_by_key_per_tenant(api: Client, sessions: Sessions) -> None:
    tenant = api.key.tenant_id
    await add_rule(sessions, tenant, TOKENS_80)
    dead_letter = {"kind": "operational", "condition": "dead_letter"}
    dead = await add_rule(sessions, tenant, {"key": "dead-letters", "rule": dead_letter})
    globex = await make_tenant(sessions, "globex")
    payment_failed = {"kind": "operational", "condition": "payment_failed"}
    await add_rule(sessions, "globex", {"key": "globex-only", "rule": payment_failed})

    listed = await api.get("/v1/alert-rules")
    assert [r["key"] for r in listed] == ["dead-letters", "tokens-80"]
    one = await api.get("/v1/alert-rules/tokens-80")
    assert one == listed[1]
    assert one["name"] == TOKENS_80["name"]
    assert one["rule"] == {
        "kind": "usage_threshold",
        "meter": "tokens",
        "subject": None,
        "unit": "percent_of_included",
        "thresholds": ["80", "100"],
        "recurring_every": None,
    }
    assert datetime.fromisoformat(one["created_at"]).tzinfo is not None
    assert {k: v for k, v in listed[0].items() if k != "created_at"} == {
        "key": "dead-letters",
        "name": None,
        "rule": {"kind": "operational", "condition": "dead_letter"},
    }
    assert datetime.fromisoformat(listed[0]["created_at"]) == dead.created_at

    p = problem(await api.http.get("/v1/alert-rules/missing", headers=api.auth), 404)
    assert "missing" in p["detail"]
    # another tenant's rule is invisible, and this tenant's are invisible to it
    problem(await api.http.get("/v1/alert-rules/globex-only", headers=api.auth), 404)
    other = Client(api.http, globex)
    assert [r["key"] for r in await other.get("/v1/alert-rules")] == ["globex-only"]
    problem(await other.http.get("/v1/alert-rules/tokens-80", headers=other.auth), 404)


# --- reads: alerts -----------------------------------------------------------------

QUANTITY = {
    "key": "tokens-q",
    "rule": {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["10", "20", "30"]},
}


async def _seed(sessions: Sessions, tenant: str) -> list[Alert]:
    """Ten alerts of two rules and two subjects, raised at different times (three share
    one instant: pages must break ties by id); some acknowledged, some resolved."""
    q = await add_rule(sessions, tenant, QUANTITY)
    other = await add_rule(sessions, tenant, QUANTITY | {"key": "tokens-q2"})
    alerts = [
        *usage_alerts(q, "alice", PERIOD, Decimal(35), None, T),  # 3, all at T
        *usage_alerts(q, "bob", PERIOD, Decimal(20), None, T + HOUR),  # 2
        *usage_alerts(other, "alice", PERIOD, Decimal(30), None, T + 2 * HOUR),  # 3
        *usage_alerts(other, "bob", PERIOD, Decimal(10), None, T + 3 * HOUR),  # 1
        *usage_alerts(q, "carol", PERIOD, Decimal(10), None, T - HOUR),  # 1
    ]
    assert len(alerts) == 10
    await raise_alerts(sessions, alerts)
    async with sessions() as session, session.begin():
        repo = AlertsRepository(session)
        assert await repo.acknowledge(tenant, alerts[0].id, T + 4 * HOUR) is not None
        assert await repo.acknowledge(tenant, alerts[3].id, T + 4 * HOUR) is not None
        assert await repo.resolve(tenant, alerts[5].id, T + 5 * HOUR, "by hand") is not None
    async with sessions() as session:
        every = await AlertsRepository(session).list_alerts(tenant, states=[], limit=100)
    return every


async def test_alerts_are_filtered_paged_newest_first_and_read_one_by_one(
    api: Client, sessions: Sessions
) -> None:
    tenant = api.key.tenant_id
    every = await _seed(sessions, tenant)
    newest_first = sorted(every, key=lambda a: (a.raised_at, a.id), reverse=True)

    page = await api.get("/v1/alerts")
    assert [a["alert_id"] for a in page["data"]] == [a.id for a in newest_first]
    assert page["next_cursor"] is None

    # one alert's view: every field, decimals as strings
    first = page["data"][0]
    a = newest_first[0]
    assert first == {
        "alert_id": a.id,
        "rule": "tokens-q2",
        "kind": "usage_threshold",
        "condition": "tokens",
        "subject": "bob",
        "state": "firing",
        "period_start": "2031-10-01T00:00:00Z",
        "period_end": "2031-11-01T00:00:00Z",
        "threshold": "10",
        "value": "10",
        "unit": "quantity",
        "about": {"type": "meter_usage", "id": "tokens", "href": a.about_href},
        "message": a.message,
        "raised_at": "2031-10-05T15:00:00Z",
        "acknowledged_at": None,
        "resolved_at": None,
        "resolution": None,
    }
    assert await api.get(f"/v1/alerts/{a.id}") == first

    def ids(body: dict[str, Any]) -> set[str]:
        return {x["alert_id"] for x in body["data"]}

    # states (repeatable), rule and subject filters
    def in_state(*states: str) -> set[str]:
        return {x.id for x in every if x.state in states}

    assert len(in_state("firing")) == 7
    assert ids(await api.get("/v1/alerts", state="firing")) == in_state("firing")
    both = await api.get("/v1/alerts", state=["firing", "acknowledged"])
    assert ids(both) == in_state("firing", "acknowledged") and len(ids(both)) == 9
    [gone] = (await api.get("/v1/alerts", state="resolved"))["data"]
    assert (gone["state"], gone["resolution"]) == ("resolved", "by hand")
    assert gone["resolved_at"] == "2031-10-05T17:00:00Z"
    acked = await api.get("/v1/alerts", state="acknowledged")
    assert {x["acknowledged_at"] for x in acked["data"]} == {"2031-10-05T16:00:00Z"}
    assert ids(await api.get("/v1/alerts", rule="tokens-q2")) == {
        x.id for x in every if x.rule_key == "tokens-q2"
    }
    alice = await api.get("/v1/alerts", subject="alice", rule="tokens-q", state="firing")
    assert ids(alice) == {
        x.id for x in every if (x.subject, x.rule_key, x.state) == ("alice", "tokens-q", "firing")
    }
    assert len(ids(alice)) == 2
    assert (await api.get("/v1/alerts", subject="nobody"))["data"] == []

    p = problem(await api.http.get("/v1/alerts?state=open", headers=api.auth), 422)
    assert p["errors"][0]["field"].startswith("state")
    for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("cursor=xyz", "cursor"),
                         ("rule=Not%20A%20Key", "rule")):  # fmt: skip
        p = problem(await api.http.get(f"/v1/alerts?{query}", headers=api.auth), 422)
        assert p["errors"][0]["field"] == field, p

    # pages walk every alert once, in order, ties at one instant broken by id
    for limit, filters, expected in (
        (3, {}, newest_first),
        (1, {}, newest_first),
        (5, {}, newest_first),  # 10 = 2 full pages: no empty third page
        (2, {"state": "firing"}, [x for x in newest_first if x.state == "firing"]),
    ):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": limit, **filters}
            if cursor is not None:
                params["cursor"] = cursor
            body = await api.get("/v1/alerts", **params)
            pages += 1
            assert 1 <= len(body["data"]) <= limit
            seen += [x["alert_id"] for x in body["data"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == [x.id for x in expected], (limit, filters)
        assert pages == -(-len(expected) // limit)

    # unknown (well-formed) id: 404 problem
    missing = "al_" + "f" * 32
    p = problem(await api.http.get(f"/v1/alerts/{missing}", headers=api.auth), 404)
    assert missing in p["detail"]


async def test_another_tenants_alerts_are_invisible(api: Client, sessions: Sessions) -> None:
    every = await _seed(sessions, api.key.tenant_id)
    globex = Client(api.http, await make_tenant(sessions, "globex"))
    assert await globex.get("/v1/alerts") == {"data": [], "next_cursor": None}
    for a in every[:3]:
        problem(await globex.http.get(f"/v1/alerts/{a.id}", headers=globex.auth), 404)
    # and globex's own alerts are not in acme's list
    theirs = await _seed(sessions, "globex")
    assert {x["alert_id"] for x in (await globex.get("/v1/alerts"))["data"]} == {
        a.id for a in theirs
    }
    mine = await api.get("/v1/alerts")
    assert {x["alert_id"] for x in mine["data"]} == {a.id for a in every}
    assert not {a.id for a in theirs} & {a.id for a in every}  # ids are per tenant and rule

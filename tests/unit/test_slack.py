"""Slack messages rendered from events (``workers.webhooks.slack``), and fan-out choosing
the body by the endpoint's format."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from schemas.alerts import About, AlertAcknowledged, AlertData, AlertRaised, AlertResolved
from schemas.envelope import CloudEvent
from schemas.webhooks import (
    CreateEndpoint,
    CreateEndpointData,
    EndpointUpdated,
    UpdateEndpointData,
    new_endpoint_id,
)
from workers.webhooks import service, slack, views
from workers.webhooks.domain import EndpointFilter, EventRef
from workers.webhooks.errors import EndpointConflict

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def alert_data(**overrides: Any) -> AlertData:
    fields: dict[str, Any] = {
        "alert_id": "al_" + "0123456789abcdef" * 2,
        "rule": "tokens-80",
        "kind": "usage_threshold",
        "condition": "tokens",
        "subject": "cust-42",
        "state": "firing",
        "period_start": datetime(2026, 11, 1, tzinfo=UTC),
        "period_end": datetime(2026, 12, 1, tzinfo=UTC),
        "threshold": Decimal("80000"),
        "value": Decimal("80125.5"),
        "unit": "quantity",
        "about": About(
            type="meter_usage", id="tokens", href="/v1/meters/tokens/usage?subject=cust-42"
        ),
        "message": "cust-42 used 80125.5 tokens this period (threshold 80000)",
        "raised_at": T0,
    }
    fields.update(overrides)
    return AlertData(**fields)


def raised(**overrides: Any) -> AlertRaised:
    return AlertRaised(
        source="billstream/alerts", tenantid="acme", subject="cust-42", data=alert_data(**overrides)
    )


def rendered(event: CloudEvent | bytes) -> dict[str, Any]:
    payload = event if isinstance(event, bytes) else event.to_json()
    out: dict[str, Any] = json.loads(slack.render(payload))
    return out


def everything(message: dict[str, Any]) -> list[str]:
    """Every text of a message: the fallback and each block's texts."""
    texts = [message["text"]]
    for block in message["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", [])]
    return texts


def fields(message: dict[str, Any]) -> dict[str, str]:
    """The field sections as name -> value."""
    out: dict[str, str] = {}
    for block in message["blocks"]:
        for f in block.get("fields", []):
            name, _, value = f["text"].partition("\n")
            out[name.strip("*")] = value
    return out


def assert_within_slack_limits(message: dict[str, Any]) -> None:
    assert set(message) == {"text", "blocks"}
    assert 0 < len(message["text"]) <= 3000
    assert 0 < len(message["blocks"]) <= 50
    for block in message["blocks"]:
        assert block["type"] in ("section", "context")
        if "text" in block:
            assert block["text"]["type"] == "mrkdwn"
            assert 0 < len(block["text"]["text"]) <= 3000
        assert len(block.get("fields", [])) <= 10
        for f in block.get("fields", []):
            assert 0 < len(f["text"]) <= 2000
        assert len(block.get("elements", [])) <= 10


# --- alerts ------------------------------------------------------------------------------


def test_an_alert_raised_has_a_headline_the_message_its_fields_and_where_to_look() -> None:
    m = rendered(raised())
    assert_within_slack_limits(m)
    headline = m["blocks"][0]["text"]["text"]
    assert headline.startswith(":rotating_light: *Alert raised*")
    assert "cust-42 used 80125.5 tokens this period (threshold 80000)" in headline
    assert m["text"] == (
        ":rotating_light: Alert raised [acme]: "
        "cust-42 used 80125.5 tokens this period (threshold 80000)"
    )
    f = fields(m)
    assert f["Rule"] == "`tokens-80`"
    assert f["Condition"] == "usage threshold `tokens`"
    assert f["Subject"] == "cust-42"
    assert f["Value / threshold"] == "80125.5 / 80000"
    assert f["Period"] == "2026-11-01 → 2026-12-01"
    assert f["State"] == "firing" and f["Tenant"] == "acme"
    context = " ".join(e["text"] for e in m["blocks"][-1]["elements"])
    assert "`/v1/meters/tokens/usage?subject=cust-42`" in context
    assert "`al_0123456789abcdef0123456789abcdef`" in context


@pytest.mark.parametrize(
    ("event", "state", "emoji", "headline"),
    [
        (AlertRaised, "firing", ":rotating_light:", "Alert raised"),
        (AlertAcknowledged, "acknowledged", ":eyes:", "Alert acknowledged"),
        (AlertResolved, "resolved", ":white_check_mark:", "Alert resolved"),
    ],
)
def test_each_state_has_its_emoji(
    event: type[AlertRaised | AlertAcknowledged | AlertResolved],
    state: str,
    emoji: str,
    headline: str,
) -> None:
    data = alert_data(state=state, resolution="rule deleted" if state == "resolved" else None)
    m = rendered(event(source="billstream/alerts", tenantid="acme", data=data))
    assert m["blocks"][0]["text"]["text"].startswith(f"{emoji} *{headline}*")
    assert m["text"].startswith(f"{emoji} {headline} [acme]: ")
    assert fields(m)["State"] == state
    assert ("Resolution" in fields(m)) == (state == "resolved")


def test_units_percent_and_money_in_major_units_and_an_hourly_period() -> None:
    pct = fields(rendered(raised(unit="percent_of_included", value=Decimal(85), threshold=80)))
    assert pct["Value / threshold"] == "85% / 80%"
    spend = fields(
        rendered(raised(kind="spend_threshold", unit="EUR", value=Decimal(12550), threshold=10000))
    )
    assert spend["Value / threshold"] == "125.50 EUR / 100.00 EUR"
    jpy = fields(rendered(raised(unit="JPY", value=Decimal(1200), threshold=Decimal(1000))))
    assert jpy["Value / threshold"] == "1200 JPY / 1000 JPY"
    hour = fields(
        rendered(
            raised(
                kind="anomaly",
                period_start=datetime(2026, 11, 22, 9, tzinfo=UTC),
                period_end=datetime(2026, 11, 22, 10, tzinfo=UTC),
            )
        )
    )
    assert hour["Period"] == "2026-11-22 09:00 → 10:00 UTC"


def test_an_operational_alert_without_values_or_subject() -> None:
    m = rendered(
        raised(
            kind="operational",
            condition="webhook_endpoint_disabled",
            subject=None,
            value=None,
            threshold=None,
            unit=None,
            period_start=None,
            period_end=None,
            about=About(type="webhook_endpoint", id="ep_x", href="/v1/webhooks/endpoints/ep_x"),
            message="webhook endpoint ep_x was disabled: failing",
        )
    )
    assert_within_slack_limits(m)
    f = fields(m)
    assert "Value / threshold" not in f and "Period" not in f
    assert f["Condition"] == "operational `webhook_endpoint_disabled`"
    assert f["Subject"] == "cust-42"  # the event's subject when the alert has none


def test_an_absolute_href_is_a_link() -> None:
    m = rendered(
        raised(about=About(type="invoice", id="inv_1", href="https://billing.example.com/i?a=1&b"))
    )
    context = m["blocks"][-1]["elements"][0]["text"]
    assert context == "Details: <https://billing.example.com/i?a=1&amp;b|Open>"


# --- escaping and limits -------------------------------------------------------------------


def test_event_text_is_escaped_so_it_cannot_mention_or_link() -> None:
    m = rendered(
        raised(
            subject="<!channel> & <@U123>",
            message="spend > limit for <https://evil.example|click> & co",
            rule="tokens-80",
        )
    )
    assert_within_slack_limits(m)
    assert fields(m)["Subject"] == "&lt;!channel&gt; &amp; &lt;@U123&gt;"
    assert "spend &gt; limit for &lt;https://evil.example|click&gt; &amp; co" in m["text"]
    for text in everything(m):
        # the only "<" left would be our own links; there are none here
        assert "<" not in text and ">" not in text.replace("&gt;", ""), text
    assert slack.escape("a&b<c>d") == "a&amp;b&lt;c&gt;d"


def test_backticks_cannot_break_out_of_code() -> None:
    m = rendered(raised(about=About(type="invoice", id="x", href="/v1/a`b")))
    assert "Details: `/v1/a'b`" in m["blocks"][-1]["elements"][0]["text"]
    event = CloudEvent(source="s", type="x.y", tenantid="acme", data={"s": "```<b>```"})
    code = rendered(event)["blocks"][2]["text"]["text"]
    assert code.count("```") == 2 and code.startswith("```\n") and code.endswith("\n```")


def test_long_texts_are_clipped_within_slack_limits_without_cutting_an_escape() -> None:
    long = "&" * 5000
    m = rendered(raised(message=long, subject="<" * 400, resolution="x" * 5000))
    assert_within_slack_limits(m)
    headline = m["blocks"][0]["text"]["text"]
    assert headline.endswith("&amp;…")  # whole escapes only, then the ellipsis
    assert len(headline) < 1100
    assert fields(m)["Subject"].endswith("&lt;…")
    assert slack.clip("a&b", 5) == "a…"
    assert slack.clip("a&bc", 7) == "a&amp;…"
    assert slack.clip("a&b", 7) == "a&amp;b"


# --- any other event -----------------------------------------------------------------------


def test_any_other_event_gets_a_generic_message_with_a_short_pretty_excerpt_of_data() -> None:
    event = CloudEvent(
        source="billstream/invoicing",
        type="invoice.finalized",
        subject="cust-1",
        tenantid="acme",
        data={"invoice_id": "inv_1", "total": 1250, "currency": "EUR", "note": "a < b"},
    )
    m = rendered(event)
    assert_within_slack_limits(m)
    assert m["text"] == ":incoming_envelope: invoice.finalized [acme] for cust-1"
    assert m["blocks"][0]["text"]["text"] == ":incoming_envelope: *invoice.finalized*"
    assert fields(m) == {"Type": "`invoice.finalized`", "Tenant": "acme", "Subject": "cust-1"}
    code = m["blocks"][2]["text"]["text"]
    assert code.startswith("```\n{\n") and code.endswith("\n```")
    assert '  "invoice_id": "inv_1",\n  "total": 1250,' in code
    assert '"note": "a &lt; b"' in code


def test_a_large_data_excerpt_is_truncated() -> None:
    event = CloudEvent(
        source="s",
        type="meter.usage_recorded",
        tenantid="acme",
        data={"lines": [{"sku": f"sku-{i}", "quantity": i} for i in range(1000)]},
    )
    m = rendered(event)
    assert_within_slack_limits(m)
    code = m["blocks"][2]["text"]["text"]
    assert len(code) <= slack.MAX_DATA + 10
    assert code.endswith("…\n```")
    assert "Subject" not in fields(m)


def test_an_alert_event_with_unexpected_data_is_still_rendered() -> None:
    m = rendered(b'{"type":"alert.raised","tenantid":"acme","data":{"message":"hi","x":[1]}}')
    assert m["text"] == ":rotating_light: Alert raised [acme]: hi"
    m = rendered(b'{"type":"alert.raised","tenantid":"acme","data":"not an object"}')
    assert m["text"] == ":incoming_envelope: alert.raised [acme]"


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe not utf-8",
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b"",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type": "x", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_undecodable_payloads_fall_back_to_a_generic_text(payload: bytes) -> None:
    m = rendered(payload)
    assert_within_slack_limits(m)
    assert m["text"].startswith(":warning: A billstream event that is not CloudEvents JSON")
    assert f"({len(payload)} bytes)" in m["text"]


def test_an_undecodable_excerpt_is_escaped_and_short() -> None:
    m = rendered(b"<!here> " + b"x" * 5000)
    code = m["blocks"][1]["text"]["text"]
    assert code.startswith("```\n&lt;!here&gt; xxx") and len(code) <= slack.MAX_DATA + 10


# --- fan-out picks the body by format ------------------------------------------------------


def test_fan_out_stores_the_body_of_each_endpoints_format() -> None:
    payload = raised().to_json()
    eps = [
        EndpointFilter("acme", "ep_std", ["*"]),
        EndpointFilter("acme", "ep_slack", ["alert.*"], "slack"),
        EndpointFilter("acme", "ep_slack2", ["*"], "slack"),
        EndpointFilter("acme", "ep_quiet", ["invoice.*"], "slack"),
    ]
    event = EventRef("acme", "evt-1", "billstream/alerts", "alert.raised", "cust-42", payload)
    msgs = {m.endpoint_id: m for m in service.fan_out([event], eps, T0)}
    assert set(msgs) == {"ep_std", "ep_slack", "ep_slack2"}
    assert msgs["ep_std"].payload == payload  # unchanged bytes
    assert msgs["ep_slack"].payload == slack.render(payload) == msgs["ep_slack2"].payload
    assert msgs["ep_slack"].id == service.message_id("ep_slack", "billstream/alerts", "evt-1")
    assert service.body("standard", payload) == payload
    assert service.body("something-new", payload) == payload


def test_the_format_is_part_of_an_endpoints_definition() -> None:
    create = CreateEndpoint(
        source="tests",
        tenantid="acme",
        data=CreateEndpointData(url="https://x.io", endpoint_id=new_endpoint_id(), format="slack"),
    )
    slack_ep = service.new_endpoint(create)
    assert slack_ep.format == "slack" and views.endpoint_data(slack_ep).format == "slack"
    patch = UpdateEndpointData(endpoint_id=slack_ep.id, format="standard")
    assert service.changes(patch) == {"format": "standard"}
    standard_ep = dataclasses.replace(slack_ep, format="standard")
    [updated] = service.update_events(create, slack_ep, standard_ep)
    assert isinstance(updated, EndpointUpdated) and updated.data.format == "standard"
    with pytest.raises(EndpointConflict):  # the same id for another format is refused
        service.ensure_same_definition(slack_ep, standard_ep)

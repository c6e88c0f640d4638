"""Slack messages rendered from events: pure, no I/O.

``render`` turns an event's CloudEvents JSON (the bytes on the topic) into the body of a
Slack incoming webhook: ``{"text": ..., "blocks": [...]}``. ``text`` is the notification
fallback (and what Slack-compatible receivers without Block Kit, such as Mattermost,
show); ``blocks`` is the formatted message. Alerts (``alert.*``) get a headline with an
emoji per state, the alert's message, its fields and where to look; any other event a
generic message with its type, tenant, subject and the start of its ``data``.

Every piece of text from the event is escaped per Slack's mrkdwn rules (``&``, ``<``,
``>``: so a subject like ``<!channel>`` cannot mention anyone) and clipped to Slack's
limits. Nothing here raises on the payload: undecodable bytes become a generic text, so
a malformed event never stops the fan-out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.currency import MINOR_UNITS

# Slack's limits: 3000 characters for a section's text, 2000 for a field, 10 fields. Ours
# are a little lower, Slack counts some characters (emoji, astral planes) as two.
MAX_TEXT = 2900
MAX_FIELD = 1900
MAX_FIELDS = 10
MAX_MESSAGE = 1000  # an alert's message in the headline
MAX_DATA = 500  # the generic message's excerpt of ``data`` (pretty JSON)
MAX_VALUE = 200  # one short value (type, tenant, subject, rule, …)
ELLIPSIS = "…"

STATE_EMOJI = {
    "firing": ":rotating_light:",
    "acknowledged": ":eyes:",
    "resolved": ":white_check_mark:",
}
STATE_OF_TYPE = {
    "alert.raised": "firing",
    "alert.acknowledged": "acknowledged",
    "alert.resolved": "resolved",
}
HEADLINE = {
    "firing": "Alert raised",
    "acknowledged": "Alert acknowledged",
    "resolved": "Alert resolved",
}
EVENT_EMOJI = ":incoming_envelope:"
UNDECODABLE_EMOJI = ":warning:"

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    """``text`` for a mrkdwn field: ``&``, ``<`` and ``>`` as Slack's control sequences."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def clip(text: str, limit: int) -> str:
    """``text`` escaped, at most ``limit`` characters once escaped (never cutting an
    escape sequence in half); shortened ones end with an ellipsis."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    out: list[str] = []
    size = 0
    for ch in text:
        piece = _ESCAPES.get(ch, ch)
        if size + len(piece) > limit - len(ELLIPSIS):
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + ELLIPSIS


def _code(text: str, limit: int) -> str:
    """Inline code: escaped, clipped, and without backticks (they would end it)."""
    inner = clip(text.replace("`", "'"), limit - 2)
    return f"`{inner}`"


def _code_block(text: str, limit: int) -> str:
    """A preformatted block of at most ``limit`` characters (``MAX_DATA`` of content)."""
    body = clip(text, min(MAX_DATA, limit - 8)).replace("```", "`\u200b``")
    return f"```\n{body}\n```"


def _str(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_TEXT]}}


def _fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": f"*{name}*\n{value}"[:MAX_FIELD]}
            for name, value in pairs[:MAX_FIELDS]
        ],
    }


def _context(parts: list[str]) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": p} for p in parts[:10]]}


def _message(text: str, blocks: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"text": text[:MAX_TEXT], "blocks": blocks}, ensure_ascii=False, separators=(",", ":")
    ).encode()


# --- alerts ---------------------------------------------------------------------------


def _amount(value: str, unit: str | None) -> str:
    """A value in its unit: ``1200``, ``85%``, ``125.00 EUR`` (spend is in minor units)."""
    if unit == "percent_of_included":
        return f"{value}%"
    if unit is not None and unit in MINOR_UNITS:
        try:
            minor = Decimal(value)
        except (InvalidOperation, ValueError):
            minor = Decimal("NaN")
        if not minor.is_finite() or abs(minor.adjusted()) > 30:  # shown as sent
            return f"{value} {unit} (minor units)"
        exp = MINOR_UNITS[unit]
        return f"{minor.scaleb(-exp):.{exp}f} {unit}"
    if unit is None or unit == "quantity":
        return value
    return f"{value} {unit}"


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _period(start: str | None, end: str | None) -> str | None:
    """``2026-11-01 → 2026-12-01`` for whole days, else times in UTC."""
    a, b = _when(start), _when(end)
    if a is None or b is None:
        return start or end
    midnight = all((t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0) for t in (a, b))
    if midnight:
        return f"{a:%Y-%m-%d} → {b:%Y-%m-%d}"
    if a.date() == b.date():
        return f"{a:%Y-%m-%d %H:%M} → {b:%H:%M} UTC"
    return f"{a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M} UTC"


def _link(href: str) -> str:
    """An absolute URL as a link; an API path or a CLI command as inline code."""
    if href.startswith(("https://", "http://")):
        url = escape(href.replace("|", "%7C").replace(" ", "%20"))
        if len(url) <= MAX_FIELD:
            return f"<{url}|Open>"
    return _code(href, MAX_FIELD)


def _alert(event: dict[str, Any], data: dict[str, Any]) -> bytes:
    state = _str(data, "state") or STATE_OF_TYPE.get(str(event.get("type")), "firing")
    emoji = STATE_EMOJI.get(state, EVENT_EMOJI)
    headline = HEADLINE.get(STATE_OF_TYPE.get(str(event.get("type")), ""), f"Alert {state}")
    message = _str(data, "message") or _str(data, "condition") or "(no message)"
    tenant = _str(event, "tenantid")

    pairs: list[tuple[str, str]] = []
    if (rule := _str(data, "rule")) is not None:
        pairs.append(("Rule", _code(rule, MAX_VALUE)))
    if (condition := _str(data, "condition")) is not None:
        kind = (_str(data, "kind") or "").replace("_", " ")
        pairs.append(
            ("Condition", f"{clip(kind, MAX_VALUE)} {_code(condition, MAX_VALUE)}".strip())
        )
    subject = _str(data, "subject") or _str(event, "subject")
    pairs.append(("Subject", clip(subject, MAX_VALUE) if subject else "every subject"))
    value, threshold, unit = _str(data, "value"), _str(data, "threshold"), _str(data, "unit")
    if value is not None or threshold is not None:
        shown = " / ".join(_amount(v, unit) if v is not None else "n/a" for v in (value, threshold))
        pairs.append(("Value / threshold", clip(shown, MAX_VALUE)))
    if (period := _period(_str(data, "period_start"), _str(data, "period_end"))) is not None:
        pairs.append(("Period", clip(period, MAX_VALUE)))
    pairs.append(("State", clip(state, MAX_VALUE)))
    if tenant is not None:
        pairs.append(("Tenant", clip(tenant, MAX_VALUE)))
    if (resolution := _str(data, "resolution")) is not None:
        pairs.append(("Resolution", clip(resolution, MAX_FIELD - 20)))

    context: list[str] = []
    about = data.get("about")
    if isinstance(about, dict) and (href := _str(about, "href")) is not None:
        context.append(f"Details: {_link(href)}")
    if (alert_id := _str(data, "alert_id")) is not None:
        context.append(f"Alert {_code(alert_id, MAX_VALUE)}")

    blocks = [
        _section(f"{emoji} *{headline}*: {clip(message, MAX_MESSAGE)}"),
        _fields(pairs),
    ]
    if context:
        blocks.append(_context(context))
    where = f" [{clip(tenant, MAX_VALUE)}]" if tenant else ""
    text = f"{emoji} {headline}{where}: {clip(message, MAX_MESSAGE)}"
    return _message(text, blocks)


# --- anything else ----------------------------------------------------------------------


def _generic(event: dict[str, Any]) -> bytes:
    type_ = _str(event, "type") or "(no type)"
    tenant = _str(event, "tenantid")
    subject = _str(event, "subject")
    pairs = [("Type", _code(type_, MAX_VALUE))]
    if tenant is not None:
        pairs.append(("Tenant", clip(tenant, MAX_VALUE)))
    if subject is not None:
        pairs.append(("Subject", clip(subject, MAX_VALUE)))
    blocks = [_section(f"{EVENT_EMOJI} *{clip(type_, MAX_VALUE)}*"), _fields(pairs)]
    if "data" in event:
        pretty = json.dumps(event["data"], indent=2, ensure_ascii=False, default=str)
        blocks.append(_section(_code_block(pretty, MAX_TEXT)))
    context = [
        f"{name} {_code(v, MAX_VALUE)}" for name in ("source", "id") if (v := _str(event, name))
    ]
    if context:
        blocks.append(_context(context))
    about = f" for {clip(subject, MAX_VALUE)}" if subject else ""
    where = f" [{clip(tenant, MAX_VALUE)}]" if tenant else ""
    return _message(f"{EVENT_EMOJI} {clip(type_, MAX_VALUE)}{where}{about}", blocks)


def _undecodable(payload: bytes) -> bytes:
    text = (
        f"{UNDECODABLE_EMOJI} A billstream event that is not CloudEvents JSON "
        f"({len(payload)} bytes)"
    )
    excerpt = payload[:MAX_DATA].decode("utf-8", errors="replace")
    blocks = [_section(text)]
    if excerpt:
        blocks.append(_section(_code_block(excerpt, MAX_TEXT)))
    return _message(text, blocks)


def render(payload: bytes) -> bytes:
    """The Slack message (JSON bytes) for an event's CloudEvents JSON. Never raises: what
    cannot be read (not JSON, not an object, nested too deeply) becomes a generic text."""
    try:
        event = json.loads(payload)
        if not isinstance(event, dict):
            return _undecodable(payload)
        data = event.get("data")
        if str(event.get("type", "")).startswith("alert.") and isinstance(data, dict):
            return _alert(event, data)
        return _generic(event)
    except (ValueError, TypeError, RecursionError):
        return _undecodable(payload)

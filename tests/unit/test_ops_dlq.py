"""The pure core of ``billstream dlq``: reading error headers, choosing what to redrive,
marking a redrive."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from workers.ops.dlq import (
    DlqEntry,
    Selection,
    choose,
    dlq_topic_of,
    parse_ref,
    redrive_headers,
)
from workers.ops.errors import UsageError

AT = datetime(2026, 11, 22, 10, tzinfo=UTC)


def entry(
    offset: int,
    *,
    error: str = "unusable_event",
    tenant: str = "acme",
    type: str = "llm.completion",
    count: int = 0,
    redriven: bool = False,
    origin: bool = True,
) -> DlqEntry:
    headers = [("ce_type", b"x")]
    if origin:
        headers += [
            ("billstream-dlq-reason", b"no meter reads event type 'llm.completion'"),
            ("billstream-dlq-error", error.encode()),
            ("billstream-dlq-topic", b"billstream.usage.v1"),
            ("billstream-dlq-partition", b"2"),
            ("billstream-dlq-offset", b"17"),
            ("billstream-dlq-group", b"billstream.metering"),
            ("billstream-dlq-at", b"2026-11-22T10:00:00+00:00"),
        ]
    if count:
        headers.append(("billstream-redrive-count", str(count).encode()))
    value = json.dumps({"id": f"e{offset}", "tenantid": tenant, "type": type}).encode()
    return DlqEntry(
        "billstream.usage.v1.dlq", 0, offset, 0, b"acme:c", value, tuple(headers),
        AT if redriven else None,
    )  # fmt: skip


def test_an_entry_reads_its_error_headers_and_event() -> None:
    e = entry(3)
    assert (e.error, e.original_topic, e.original_partition, e.original_offset) == (
        "unusable_event",
        "billstream.usage.v1",
        2,
        17,
    )
    assert e.summary()["id"] == "e3" and e.summary()["tenantid"] == "acme"
    assert e.detail()["value"]["type"] == "llm.completion"
    raw = DlqEntry("t.dlq", 0, 0, 0, None, b"\xff\x00", ())
    assert raw.event == {} and raw.detail()["value"] == {"base64": "/wA="}


def test_redrive_headers_drop_the_dlq_headers_and_count_the_redrive() -> None:
    headers = dict(redrive_headers(entry(3, count=1), "audit-1", AT))
    assert not [k for k in headers if k.startswith("billstream-dlq-")]
    assert headers["ce_type"] == b"x"
    assert headers["billstream-redrive-count"] == b"2"
    assert headers["billstream-redrive-of"] == b"billstream.usage.v1.dlq/0/3"
    assert headers["billstream-redrive-id"] == b"audit-1"


def test_choose_skips_redriven_records_those_at_the_limit_and_those_without_origin() -> None:
    entries = [
        entry(0),
        entry(1, redriven=True),
        entry(2, count=3),
        entry(3, origin=False),
        entry(4, tenant="globex"),
        entry(5, error="unknown_tenant"),
    ]
    chosen, skipped = choose(entries, Selection(all=True), max_redrives=3)
    assert [e.offset for e in chosen] == [0, 4, 5]
    assert [(s.entry.offset, s.why.split(" ")[0]) for s in skipped] == [
        (1, "already"),
        (2, "redriven"),
        (3, "no"),
    ]
    chosen, _ = choose(entries, Selection(all=True), max_redrives=3, again=True, force=True)
    assert [e.offset for e in chosen] == [0, 1, 2, 4, 5]
    chosen, _ = choose(entries, Selection(tenant="globex"), max_redrives=3)
    assert [e.offset for e in chosen] == [4]
    chosen, _ = choose(entries, Selection(error="unknown_tenant"), max_redrives=3)
    assert [e.offset for e in chosen] == [5]
    chosen, _ = choose(entries, Selection(records=((0, 4), (0, 0))), max_redrives=3)
    assert [e.offset for e in chosen] == [0, 4]
    chosen, _ = choose(entries, Selection(type_glob="invoice.*"), max_redrives=3)
    assert chosen == []
    with pytest.raises(UsageError, match="no record 0:99"):
        choose(entries, Selection(records=((0, 99),)), max_redrives=3)


def test_selection_and_references() -> None:
    with pytest.raises(UsageError):
        Selection().validate()
    assert parse_ref("2:15") == (2, 15)
    with pytest.raises(UsageError, match="PARTITION:OFFSET"):
        parse_ref("2-15")
    assert dlq_topic_of("billstream.usage.v1") == "billstream.usage.v1.dlq"
    assert dlq_topic_of("billstream.usage.v1.dlq") == "billstream.usage.v1.dlq"

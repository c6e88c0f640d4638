"""docs/events.md is generated from the message catalog and must not go stale."""

from __future__ import annotations

from schemas.catalog import CATALOG
from schemas.topics import TOPICS
from workers.ops.eventsdoc import DOC, REGENERATE, render


def test_docs_events_md_is_up_to_date() -> None:
    assert DOC.exists(), f"{DOC} is missing; run: {REGENERATE}"
    assert DOC.read_text() == render(), (
        f"{DOC} is stale (schemas/catalog.py or schemas/topics.py changed); run: {REGENERATE}"
    )


def test_it_lists_every_topic_key_event_type_and_field() -> None:
    text = render()
    for topic in TOPICS:
        assert f"| `{topic.name}` | `{topic.key}` |" in text
    for spec in CATALOG:
        if spec.ce_type != "*":
            assert f"### `{spec.ce_type}`" in text
    # nested fields are spelled out with their types and constraints
    assert "| `data.lines[].total` | integer | yes | Minor units, tax included" in text
    assert '| `data.aggregation` | one of `"count"`, `"sum"`' in text

"""Lag arithmetic and its Prometheus form."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from workers.ops.lag import LagRow, prometheus_text, totals


def test_lag_is_the_end_minus_the_committed_offset_or_the_whole_log_without_one() -> None:
    assert LagRow("g", "t", 0, 7, 0, 10).lag == 3
    assert LagRow("g", "t", 0, None, 4, 10).lag == 6  # retention removed 0-3
    assert LagRow("g", "t", 0, 2, 4, 10).lag == 6  # committed before the log start
    assert LagRow("g", "t", 0, 10, 0, 10).lag == 0
    rows = [LagRow("g", "t", 0, 7, 0, 10), LagRow("g", "t", 1, None, 0, 5)]
    assert totals(rows) == {("g", "t"): 8}


def test_prometheus_text_has_one_gauge_sample_per_partition() -> None:
    text = prometheus_text([LagRow("unit-g", "unit-t", 0, 7, 0, 10)])
    samples = {
        (s.name, s.labels.get("partition")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("topic") == "unit-t"
    }
    assert samples == {
        ("billstream_consumer_lag", "0"): 3,
        ("billstream_consumer_committed_offset", "0"): 7,
        ("billstream_topic_end_offset", "0"): 10,
    }
    assert "billstream_messages_consumed_total" not in text  # only the lag gauges

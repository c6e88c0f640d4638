"""The pure core of ``billstream replay``: bounds, filters, headers, the group plan, pacing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from workers.ops.errors import UsageError
from workers.ops.replay import (
    REPLAY_ID_HEADER,
    REPLAY_OF_HEADER,
    Pacer,
    ReplayRequest,
    matches,
    parse_bound,
    plan_group_reset,
    replay_headers,
)


def test_bounds_are_offsets_times_dates_or_either_end() -> None:
    assert parse_bound("42", "--from").offset == 42
    assert parse_bound("earliest", "--from").kind == "earliest"
    assert parse_bound("LATEST", "--to").kind == "latest"
    t = parse_bound("2026-11-22T10:00:00Z", "--from")
    assert (t.kind, t.time) == ("time", datetime(2026, 11, 22, 10, tzinfo=UTC))
    assert parse_bound("2026-11-22T11:00:00+01:00", "--from").time == t.time
    assert parse_bound("2026-11-22", "--from").time == datetime(2026, 11, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("-3", "cannot be negative"),
        ("2026-11-22T10:00:00", "no time zone"),
        ("yesterday", "neither an offset"),
    ],
)
def test_bad_bounds_name_the_option(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as e:
        parse_bound(text, "--to")
    assert e.value.option == "--to" and e.value.exit_code == 2


def test_filters_match_tenant_and_type_glob_of_cloudevents_only() -> None:
    value = json.dumps({"tenantid": "acme", "type": "invoice.created"}).encode()
    assert matches(value, None, None)
    assert matches(b"not json", None, None)  # no filter: everything
    assert matches(value, "acme", "invoice.*")
    assert not matches(value, "globex", None)
    assert not matches(value, None, "payment.*")
    assert not matches(b"not json", "acme", None)
    assert not matches(b"[1]", None, "x")


def test_replay_headers_keep_the_records_own_and_replace_an_earlier_replays() -> None:
    at = datetime(2026, 11, 22, tzinfo=UTC)
    once = replay_headers([("ce_type", b"x")], "r1", "t/0/5", at)
    twice = replay_headers(once, "r2", "t/1/9", at)
    assert twice[0] == ("ce_type", b"x")
    assert dict(twice)[REPLAY_ID_HEADER] == b"r2" and dict(twice)[REPLAY_OF_HEADER] == b"t/1/9"
    assert [k for k, _ in twice].count(REPLAY_ID_HEADER) == 1


def test_a_group_is_moved_back_only_where_it_read_further_than_the_target() -> None:
    plan = plan_group_reset({0: 10, 1: 3, 2: None}, {0: 4, 1: 5, 2: 0}, {0: 10, 1: 8, 2: 2})
    assert [(p.partition, p.moves, p.rereads) for p in plan] == [
        (0, True, 6),
        (1, False, 0),  # never forward: that would skip records
        (2, False, 0),  # never read: it will start from the beginning anyway
    ]
    assert "not read this partition" in plan[2].note


def test_pacer_allows_a_burst_then_spaces_records_at_the_rate() -> None:
    pacer = Pacer(10)
    now = pacer._last
    delays = [pacer.delay(now) for _ in range(12)]
    assert delays[:10] == [0.0] * 10
    assert delays[10] == pytest.approx(0.1) and delays[11] == pytest.approx(0.2)
    assert Pacer(0).delay(now) == 0.0


def test_requests_choose_one_mode_and_group_resets_take_no_selection() -> None:
    start = parse_bound("0", "--from")
    base = {"topic": "t", "start": start, "reason": "why", "actor": "me"}
    with pytest.raises(UsageError, match="choose one mode"):
        ReplayRequest(**base).validate()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="choose one mode"):
        ReplayRequest(**base, group="g", into="t2").validate()  # type: ignore[arg-type]
    with pytest.raises(UsageError) as e:
        ReplayRequest(**base, group="g", tenant="acme").validate()  # type: ignore[arg-type]
    assert e.value.option == "--tenant"
    with pytest.raises(UsageError) as e:
        ReplayRequest(**{**base, "reason": " "}, into="t").validate()  # type: ignore[arg-type]
    assert e.value.option == "--reason"
    with pytest.raises(UsageError) as e:
        ReplayRequest(**base, into="t", tenant="Not A Slug").validate()  # type: ignore[arg-type]
    assert e.value.option == "--tenant"
    ReplayRequest(**base, into="t", tenant="acme", type_glob="usage.*").validate()  # type: ignore[arg-type]

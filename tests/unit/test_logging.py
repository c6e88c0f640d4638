"""One format for our lines and the libraries' (stdlib ``logging``), routine library lines
at DEBUG, colour only on a terminal."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from workers.runtime.app import make_broker
from workers.runtime.logging import configure
from workers.settings import Settings

ASSIGNED = "Consumer m-1 assigned to partitions: (TopicPartition(topic='t', partition=0))"
EXECUTED = "callback for Task-17 is being executed..."


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    configure("INFO", "console")  # what tests/conftest.py sets for the session


def emit() -> None:
    structlog.get_logger("billstream.worker").info("worker started", worker="metering")
    logging.getLogger("aiokafka").warning("Heartbeat failed for group %s", "g1")
    logging.getLogger("faststream").info(ASSIGNED)
    logging.getLogger("faststream").info(EXECUTED)
    logging.getLogger("faststream.access.kafka").warning(EXECUTED)


def test_json_lines_for_ours_and_the_libraries(capfd: pytest.CaptureFixture[str]) -> None:
    configure("INFO", "json", libraries="INFO")
    emit()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(r["event"], r["level"]) for r in lines] == [
        ("worker started", "info"),
        ("Heartbeat failed for group g1", "warning"),
    ]
    assert lines[1]["logger"] == "aiokafka" and lines[0]["worker"] == "metering"
    assert all("timestamp" in r for r in lines)


def test_routine_library_lines_show_at_debug_only(capfd: pytest.CaptureFixture[str]) -> None:
    configure("DEBUG", "json", libraries="DEBUG")
    emit()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert {(r["event"], r["level"]) for r in lines} >= {
        (ASSIGNED, "debug"),
        (EXECUTED, "debug"),
    }


def test_console_lines_share_one_format_and_carry_no_colour_off_a_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure("INFO", "console")
    emit()
    err = capfd.readouterr().err
    assert "\x1b[" not in err
    lines = err.splitlines()
    assert len(lines) == 2, err  # the routine faststream lines are not there
    assert "[info     ] worker started" in lines[0] and "worker=metering" in lines[0]
    assert "[warning  ] Heartbeat failed for group g1" in lines[1] and "[aiokafka]" in lines[1]
    assert not any(line.startswith(("WARNING:", "INFO:")) for line in lines)


def test_the_brokers_logger_goes_through_our_handler_only(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """faststream gives its logger a colourised handler of its own; the broker's is ours."""
    configure("INFO", "json")
    make_broker(Settings(), client_id="t")
    logger = logging.getLogger("faststream")
    assert logger.handlers == [] and logger.propagate
    logger.warning("a real warning")
    (line,) = capfd.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "a real warning"

"""Tables of the operations CLI (``dlq list``, ``lag``, ``quarantine list``) piped into a
file or another program keep every character: rich would cut them to 80 columns."""

from __future__ import annotations

import pytest
from rich.table import Table

from workers.ops.commands import console


def test_a_table_into_a_pipe_is_printed_whole(capsys: pytest.CaptureFixture[str]) -> None:
    topic = "billstream.events.invoicing.v1.dlq"
    reason = "meter 'tokens' of tenant acme has no value at $.tokens in event " + "x" * 80
    t = Table("topic", "partition", "reason")
    t.add_row(topic, "0", reason)
    console.table(t)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if topic in line)
    assert reason in row  # one line, nothing elided
    assert "…" not in "".join(lines)

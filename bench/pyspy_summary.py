"""Summarise a ``py-spy record --format raw`` profile of a metering consumer by stage.

    python bench/pyspy_summary.py PROFILE.raw [--top N]

Each sample (a stack) is charged to the first stage below whose pattern one of its
frames matches, so nested stages are not counted twice. py-spy samples threads that are
running or runnable (not waiting on I/O), so shares are of the consumer's busy time.
Idle helper threads and the process start (imports, connecting) are left out.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# (stage, regex over one frame "function (file:line)"), most specific first
STAGES: list[tuple[str, str]] = [
    ("decode: JSON parse (json.loads, Decimal numbers)", r"^(loads|JSONDecoder\.\w+) \(json/"),
    ("decode: pydantic validation", r"^BaseModel\.model_validate \("),
    ("decode: msgspec parse + hand-written check", r"^(_plain_event|decode_record) \("),
    ("decode: other", r"^(decode_usage|UsageEvent\.from_json) \("),
    ("tenant check (SELECT)", r"^TenantRepository\.existing \("),
    ("inbox keys (BLAKE2b)", r"^(message_key \(storage/inbox|Message\.inbox_key|inbox_key) \("),
    ("inbox claim (INSERT … RETURNING)", r"^(claim \(storage/inbox|Tx\.claim \()"),
    ("meter lookup (SELECT)", r"^MeterRepository\.for_event_types \("),
    (
        "aggregate (pure Python)",
        r"^(_?aggregate|_plain_contribution|_contribution|_fold|hour_bucket) \(",
    ),
    ("usage upsert (unnest)", r"^UsageRepository\.apply \("),
    ("transaction commit + outbox flush", r"^(Tx\.flush|AsyncSessionTransaction\.__aexit__) \("),
    ("transaction: other (session, begin)", r"^BatchProcessor\._transaction \("),
    ("runtime: other (batch bookkeeping)", r"^BatchProcessor\.process \("),
    ("Kafka offset commit", r"^(KafkaAckableMessage\.ack|AIOKafkaConsumer\.commit) \("),
    ("Kafka fetch + record parsing (aiokafka)", r"^AIOKafkaConsumer\.getmany \("),
    ("FastStream dispatch (parse, middlewares, DI)", r"\((faststream|fast_depends)/"),
    ("outbox relay", r"^OutboxRelay\."),
    ("worker housekeeping", r"^Worker\._housekeeping \("),
    ("aiokafka background (fetcher, heartbeat)", r"\(aiokafka/"),
    ("asyncpg / SQLAlchemy (other)", r"\((asyncpg|sqlalchemy)/"),
]
# the baseline's own statements, matched by line-independent names
BASELINE: list[tuple[str, str]] = [
    ("inbox claim (INSERT … RETURNING)", r"^Connection\.fetch \(asyncpg/"),
    ("usage upsert (unnest)", r"^Connection\.execute \(asyncpg/"),
    ("transaction commit + outbox flush", r"^Transaction\.__aexit__ \(asyncpg/"),
]
STARTUP = re.compile(r"^(_find_and_load|_call_with_frames_removed|_settings|Worker\.start) \(")
IDLE = re.compile(r"^(Condition\.wait|Queue\.get|EpollSelector\.select) \(")


def summarise(path: Path) -> tuple[int, Counter[str]]:
    stages = [(name, re.compile(p)) for name, p in STAGES]
    baseline = [(name, re.compile(p)) for name, p in BASELINE]
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if IDLE.match(frames[-1]) or any(STARTUP.match(f) for f in frames):
            continue
        samples = int(n)
        total += samples
        in_baseline = any(f.startswith("baseline_consumer ") for f in frames)
        for name, pattern in (baseline if in_baseline else []) + stages:
            if any(pattern.search(f) for f in frames):
                counts[name] += samples
                break
        else:
            counts["event loop, other"] += samples
    return total, counts


def report(path: Path, out=sys.stdout) -> None:  # type: ignore[no-untyped-def]
    total, counts = summarise(path)
    print(f"  {path.name}: {total:,} busy samples", file=out)
    for name, n in counts.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}", file=out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("profile", type=Path)
    report(p.parse_args().profile)

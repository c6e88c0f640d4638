"""Two pg_stat_statements captures of `bench/invoicing.py --pg-statements`, statement by statement.

    python bench/pg_statements_compare.py A.json B.json [--scale 10] [--top 20]

A is the smaller run, B the larger (``--scale``: B has that many times A's subscriptions;
by default the ratio of the two files' ``subscriptions``). Statements are matched by their
query text (the normalised text pg_stat_statements keeps: the same statement with other
parameters is the same text). For the top ``--top`` statements by B's total time it prints
calls, mean ms per call, the per-call growth (mean B / mean A), total ms, the growth of the
total per subscription (total B / scale / total A: 1.00x is linear), blocks read per call
(from outside shared_buffers: the OS cache or the disk) and the excess (total B - scale x
total A: what that statement adds beyond linear growth). Then the whole: total time per
subscription A and B and the growth, and the statements that add most to the excess.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Statement = dict[str, Any]


def one_line(query: str, width: int) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def top_table(statements: Sequence[Statement], n: int, width: int = 70) -> list[str]:
    """The first ``n`` statements (most total time first) as a table: total and mean ms,
    calls, rows, shared blocks hit/read/dirtied/written, temp blocks written, WAL bytes."""
    total = sum(s["total_exec_time"] for s in statements) or 1.0
    head = (
        f"{'total ms':>10} {'%':>5} {'calls':>8} {'mean ms':>8} {'rows':>9} {'hit':>10} "
        f"{'read':>8} {'dirtied':>8} {'written':>8} {'temp':>6} {'WAL MB':>7}  query"
    )
    out = [head]
    for s in sorted(statements, key=lambda s: -s["total_exec_time"])[:n]:
        out.append(
            f"{s['total_exec_time']:10,.0f} {100 * s['total_exec_time'] / total:5.1f} "
            f"{s['calls']:8,} {s['mean_exec_time']:8.3f} {s['rows']:9,} "
            f"{s['shared_blks_hit']:10,} {s['shared_blks_read']:8,} "
            f"{s['shared_blks_dirtied']:8,} {s['shared_blks_written']:8,} "
            f"{s['temp_blks_written']:6,} {s['wal_bytes'] / 1e6:7.1f}  "
            f"{one_line(s['query'], width)}"
        )
    out.append(f"{total:10,.0f} ms in all {len(statements):,} statements")
    return out


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def by_text(statements: Sequence[Statement]) -> dict[str, Statement]:
    """Statements keyed by their whole query text (its md5; the first 300 characters in a
    file without it)."""
    return {s.get("query_md5") or s["query"]: s for s in statements}


def count(run: dict[str, Any]) -> str:
    n = run.get("subscriptions")
    return f"{n:,}" if isinstance(n, int) else "?"


def ratio(b: float, a: float) -> str:
    return f"{b / a:6.2f}x" if a > 0 else "     —"


def per_call(s: Statement | None, key: str) -> float | None:
    if s is None or not s["calls"]:
        return None
    return float(s[key]) / s["calls"]


def compare(a: dict[str, Any], b: dict[str, Any], scale: float, top: int, width: int) -> list[str]:
    sa, sb = by_text(a["statements"]), by_text(b["statements"])
    total_a = sum(s["total_exec_time"] for s in sa.values())
    total_b = sum(s["total_exec_time"] for s in sb.values())

    def fmt(x: float | None, spec: str, w: int) -> str:
        return f"{x:{spec}}".rjust(w) if x is not None else "—".rjust(w)

    out = [
        f"A {count(a)} subscriptions, B {count(b)}: "
        f"scale {scale:g}; settings A {a.get('settings') or {}}, B {b.get('settings') or {}}",
        f"{'calls A':>9} {'calls B':>9} {'mean A':>8} {'mean B':>8} {'call x':>7} "
        f"{'total A':>9} {'total B':>9} {'/sub x':>7} {'read/c A':>8} {'read/c B':>8} "
        f"{'excess':>8}  query (ms; read/c: shared blocks read per call)",
    ]
    ranked = sorted(sb.items(), key=lambda kv: -kv[1]["total_exec_time"])
    for key, s in ranked[:top]:
        o = sa.get(key)
        ta = o["total_exec_time"] if o else 0.0
        tb = s["total_exec_time"]
        out.append(
            f"{o['calls'] if o else 0:9,} {s['calls']:9,} "
            f"{fmt(o['mean_exec_time'] if o else None, '.3f', 8)} {s['mean_exec_time']:8.3f} "
            f"{ratio(s['mean_exec_time'], o['mean_exec_time'] if o else 0):>7} "
            f"{ta:9,.0f} {tb:9,.0f} {ratio(tb / scale, ta):>7} "
            f"{fmt(per_call(o, 'shared_blks_read'), '.2f', 8)} "
            f"{fmt(per_call(s, 'shared_blks_read'), '.2f', 8)} "
            f"{tb - scale * ta:8,.0f}  {one_line(s['query'], width)}"
        )
    na, nb = a.get("subscriptions"), b.get("subscriptions")
    if na and nb:
        out.append(
            f"all statements: A {total_a:,.0f} ms ({1000 * total_a / na:,.1f} µs/subscription), "
            f"B {total_b:,.0f} ms ({1000 * total_b / nb:,.1f} µs/subscription): "
            f"{total_b / scale / total_a if total_a else float('nan'):.2f}x per subscription"
            f" (excess {total_b - scale * total_a:,.0f} ms)"
        )
    reads_a = sum(s["shared_blks_read"] for s in sa.values())
    reads_b = sum(s["shared_blks_read"] for s in sb.values())
    hits_a = sum(s["shared_blks_hit"] for s in sa.values())
    hits_b = sum(s["shared_blks_hit"] for s in sb.values())
    out.append(
        f"shared blocks read (not in shared_buffers): A {reads_a:,} of {reads_a + hits_a:,} "
        f"({100 * reads_a / max(1, reads_a + hits_a):.2f} %), B {reads_b:,} of "
        f"{reads_b + hits_b:,} ({100 * reads_b / max(1, reads_b + hits_b):.2f} %)"
    )
    excess = sorted(
        (
            (s["total_exec_time"] - scale * (sa[k]["total_exec_time"] if k in sa else 0.0), s)
            for k, s in sb.items()
        ),
        key=lambda x: -x[0],
    )
    out.append("most excess beyond linear (B - scale x A):")
    for e, s in excess[:5]:
        out.append(f"  {e:9,.0f} ms  {one_line(s['query'], width + 30)}")
    only_b = [s for k, s in ranked if k not in sa]
    if only_b:
        out.append(
            f"{len(only_b)} statements only in B ({sum(s['total_exec_time'] for s in only_b):,.0f}"
            " ms), e.g. " + one_line(only_b[0]["query"], width)
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the smaller run's --pg-statements file")
    parser.add_argument("b", help="the larger run's --pg-statements file")
    parser.add_argument(
        "--scale",
        type=float,
        help="B's subscriptions / A's (default: from the files' subscriptions)",
    )
    parser.add_argument("--top", type=int, default=20, help="statements shown (by B's total)")
    parser.add_argument("--width", type=int, default=60, help="characters of query text")
    args = parser.parse_args(argv)
    a, b = load(args.a), load(args.b)
    scale = args.scale
    if scale is None:
        if not (a.get("subscriptions") and b.get("subscriptions")):
            parser.error("--scale is needed: a file does not say its subscriptions")
        scale = b["subscriptions"] / a["subscriptions"]
    if scale <= 0:
        parser.error("--scale must be positive")
    print("\n".join(compare(a, b, scale, args.top, args.width)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long ``billstream dev`` takes to start on a warm machine, and where the time goes.

Runs ``billstream dev`` as a user does (its own state dir, a free port, nothing set but
``BILLSTREAM_STATE_DIR`` and what ``--env`` adds). A warm machine: the state dir (the
PostgreSQL data, the dev tenant's key, the secrets key) is made by one start that is not
timed, so every timed run is a second start. Each run times, from the command's start:

(a) the banner ("billstream is running"), and
(b) the first command succeeding: a meter created through ``POST /v1/meters`` and its
    command polled until ``succeeded``, sent right after the banner;

and prints when each phase the stack logs happened: the dev command's own lines
(PostgreSQL, broker, migrations, topics, localstripe, each process ready), the ingress's
``ingress started`` and every worker's ``worker started``, and the CPU seconds the whole stack
had used by (b) (every process: the command, PostgreSQL and its backends, the broker,
localstripe, the ingress, the workers; from /proc via psutil).

Target (issue 22): the banner in < 8 s on a warm machine.

    python bench/startup.py                       # 3 runs, recorded
    python bench/startup.py --runs 1 --no-record  # a quick look
    python bench/startup.py --root /tmp/base --no-record   # A/B: another checkout's dev stack
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402
from bench.idle import cpu_s, stack, wait_command  # noqa: E402
from workers.devstack import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TARGET_S = 8.0
BANNER_END = "Ctrl-C stops everything"


def _phase(line: str) -> str | None:
    """The phase a line of the stack's output marks, or None."""
    line = line.strip()
    if line.startswith("billstream dev | "):
        return line.removeprefix("billstream dev | ")[:90]
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if event.get("event") == "worker started":
            return f"worker {event.get('worker')} started"
        if event.get("event") == "ingress started":
            return "ingress started"
    if "billstream is running" in line:
        return "banner"
    return None


class Run:
    """One ``billstream dev``: its output read by a thread, each line timestamped."""

    def __init__(self, args: argparse.Namespace, state: str) -> None:
        self.state = state
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
        env.pop("XDG_RUNTIME_DIR", None)
        env["BILLSTREAM_STATE_DIR"] = state
        if args.root:
            paths = [str(args.root), env.get("PYTHONPATH")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env.update(dict(e.split("=", 1) for e in args.env))
        self.lines: list[tuple[float, str]] = []
        self.banner = threading.Event()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "dev", "--port", str(self.port)],
            env=env,
            cwd=state,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line))
            if BANNER_END in line:
                self.banner.set()

    def wait_banner(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while not self.banner.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "".join(line for _, line in self.lines[-20:])
                raise RuntimeError(f"billstream dev gave no banner:\n{tail}")
        return next(t for t, line in self.lines if "billstream is running" in line)

    def phases(self) -> list[tuple[float, str]]:
        return [(t, p) for t, line in self.lines if (p := _phase(line))]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def one(args: argparse.Namespace, state: str, *, timed: bool = True) -> dict[str, Any]:
    run = Run(args, state)
    try:
        banner_s = run.wait_banner(args.timeout)
        if not timed:
            return {}
        key = Path(state, "dev-api-key").read_text().strip()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{run.port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as client:
            meter = {
                "key": f"startup_{int(time.time() * 1000)}",
                "event_type": "startup.probe",
                "aggregation": "count",
            }
            wait_command(client, client.post("/v1/meters", json=meter), deadline_s=args.timeout)
        command_s = time.monotonic() - run.t0
        cpu = sum(cpu_s(p) for p in stack(psutil.Process(run.proc.pid), state))
        return {"banner_s": banner_s, "command_s": command_s, "cpu_s": cpu, "phases": run.phases()}
    finally:
        run.stop()


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.1f} s, max {max(values):.1f} s"


def report(
    args: argparse.Namespace, m: dict[str, str], runs: list[dict[str, Any]], load: list[str]
) -> list[str]:
    banners = [r["banner_s"] for r in runs]
    commands = [r["command_s"] for r in runs]
    met = "met" if statistics.median(banners) < TARGET_S and max(banners) < TARGET_S else "NOT met"
    settings = ", ".join(args.env) or "none"
    lines = [
        "",
        f"## startup (`python bench/startup.py`) · {datetime.now(UTC):%Y-%m-%d} · {m['cpu']} · "
        f"{m['cores']} cores",
        "",
        f"`billstream dev` as a user starts it, a second start (state dir, PostgreSQL data, dev "
        f"key already there; embedded PostgreSQL and Tansu, localstripe, the ingress, every "
        f"worker) · {len(runs)} runs · Python {m['python']} · {m['os']} · settings added: "
        f"{settings} · load average {load[0]} before, {load[1]} after.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| command start → banner | **{summary(banners)}** "
        f"({', '.join(f'{b:.1f}' for b in banners)}) | < {TARGET_S:g} s | {met} |",
        f"| command start → first command succeeded (a meter created over HTTP right after the "
        f"banner) | {summary(commands)} ({', '.join(f'{c:.1f}' for c in commands)}) | | |",
        f"| CPU used by the whole stack by then | "
        f"{summary([r['cpu_s'] for r in runs]).replace(' s', ' CPU-s')} | | |",
        "",
        "Where the time went (the median run by banner; seconds from the command's start): "
        + " · ".join(
            f"{t:.1f} {p}"
            for t, p in sorted(runs, key=lambda r: r["banner_s"])[len(runs) // 2]["phases"]
            if not p.startswith("  ")
        )
        + ".",
    ]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3, help="timed starts (after one untimed)")
    p.add_argument("--root", type=Path, help="run the dev stack from another checkout (A/B)")
    p.add_argument("--state", help="state dir to reuse (default: a new temp dir, removed after)")
    p.add_argument("--timeout", type=float, default=120.0, help="longest wait for each step")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack")
    p.add_argument("--note", default="", help="a line to add to the recorded section")
    p.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = p.parse_args(argv)
    if any("=" not in e for e in args.env):
        p.error("--env takes NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    m = machine()
    state = args.state or tempfile.mkdtemp(prefix="billstream-startup-")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: list[dict[str, Any]] = []
    try:
        print(f"warming up (one untimed start) in {state}…", flush=True)
        one(args, state, timed=False)
        for i in range(args.runs):
            r = one(args, state)
            runs.append(r)
            print(
                f"run {i + 1}/{args.runs}: banner {r['banner_s']:.2f} s, first command "
                f"{r['command_s']:.2f} s, stack CPU {r['cpu_s']:.1f} s "
                f"(load {' '.join(f'{x:.2f}' for x in os.getloadavg())})",
                flush=True,
            )
            for t, phase in r["phases"]:
                print(f"  {t:6.2f}  {phase}", flush=True)
    finally:
        if not args.state:
            shutil.rmtree(state, ignore_errors=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = report(args, m, runs, [load_before, load_after])
    print("\n".join(lines))
    if not args.no_record:
        if args.note:
            lines += ["", args.note]
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"recorded in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

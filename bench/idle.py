"""How much CPU an idle ``billstream dev`` stack burns, and what its quiet costs in freshness.

Starts ``billstream dev`` exactly as a user does (its own state dir, a free port, nothing
set but ``BILLSTREAM_STATE_DIR`` and what ``--env`` adds), waits for its banner, times the
first command, lets it settle, then samples the CPU time (user + system, from /proc via
psutil) of every process of the stack — the command, the broker, localstripe, the ingress,
every worker and the PostgreSQL server with its backends — over ``--seconds`` of no traffic.
Afterwards, still after a lull of ``--lull`` seconds each, it times single events: posted →
visible in ``GET /v1/meters/{key}/usage`` (ingress → broker → metering → PostgreSQL), the
latency a developer sees first after a pause.

Target (issue 14): ≤ 0.05 of a core for the whole stack, idle, over a minute.

    python bench/idle.py                         # 60 s idle, 5 probes
    python bench/idle.py --seconds 20 --probes 2 --no-record
    python bench/idle.py --env BILLSTREAM_KAFKA_FETCH_MAX_WAIT_MS=100   # compare a setting
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402
from workers.devstack import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TARGET_CORES = 0.05


def stack(root: psutil.Process, state: str) -> list[psutil.Process]:
    """The command's descendants, plus PostgreSQL (``pg_ctl`` detaches it) and its backends."""
    procs = [root, *root.children(recursive=True)]
    for p in psutil.process_iter(["cmdline"]):
        if p.pid not in {q.pid for q in procs} and state in " ".join(p.info["cmdline"] or ()):
            procs += [p, *p.children(recursive=True)]
    return procs


def label(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
        name = p.name()
    except psutil.Error:
        return "gone"
    if name.startswith("postgres") or cmd.startswith("postgres"):
        return "postgresql"
    for part in ("ingress", "localstripe", "broker"):
        if part in cmd:
            return part
    if "workers.cli worker " in cmd or cmd.startswith("billstream worker "):  # forked: retitled
        return cmd.split("worker ", 1)[1].split()[0]
    if " dev " in f"{cmd} ":
        return "billstream dev"
    return "other"


def cpu_s(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def wait_command(client: httpx.Client, resp: httpx.Response, deadline_s: float = 60) -> None:
    assert resp.status_code == 202, resp.text
    url = f"/v1/commands/{resp.json()['command_id']}"
    deadline = time.monotonic() + deadline_s
    while (status := client.get(url).json()["status"]) != "succeeded":
        assert status == "pending" and time.monotonic() < deadline, status
        time.sleep(0.02)


def probe(client: httpx.Client, deadline_s: float = 30) -> float:
    """One event posted → visible in the meter's usage, in seconds."""
    subject = f"idle-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0)
    event = {
        "specversion": "1.0", "id": uuid.uuid4().hex, "source": "bench/idle",
        "type": "idle.probe", "subject": subject, "time": now.isoformat(), "data": {"n": 1},
    }  # fmt: skip
    t = time.monotonic()
    r = client.post("/v1/events", json={"events": [event]})
    assert r.status_code < 300, r.text
    day = now.date().isoformat()
    params = {"subject": subject, "from": f"{day}T00:00:00Z", "group_by": "subject"}
    while time.monotonic() - t < deadline_s:
        usage = client.get("/v1/meters/idle_probes/usage", params=params)
        if usage.status_code == 200 and subject in usage.text:
            return time.monotonic() - t
        time.sleep(0.01)
    raise TimeoutError(f"probe {subject} not visible within {deadline_s} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    state = tempfile.mkdtemp(prefix="billstream-idle-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLSTREAM_")}
    env.pop("XDG_RUNTIME_DIR", None)
    env["BILLSTREAM_STATE_DIR"] = state
    env.update(dict(e.split("=", 1) for e in args.env))
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "dev", "--port", str(port)],
        env=env,
        cwd=state,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        t = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C stops everything" in line:
                break
        else:
            raise RuntimeError("billstream dev exited before its banner")
        started_s = time.monotonic() - t
        key = Path(state, "dev-api-key").read_text().strip()
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        )
        t = time.monotonic()
        meter = {"key": "idle_probes", "event_type": "idle.probe", "aggregation": "count"}
        wait_command(client, client.post("/v1/meters", json=meter))
        first_command_s = time.monotonic() - t
        print(f"banner after {started_s:.1f} s; first command {first_command_s:.2f} s", flush=True)
        time.sleep(args.settle)  # what we measure is idleness: no warm-up work may remain
        procs = stack(psutil.Process(proc.pid), state)
        before = {p.pid: cpu_s(p) for p in procs}
        print(f"sampling {len(procs)} processes for {args.seconds:g} s…", flush=True)
        time.sleep(args.seconds)
        by_label: dict[str, float] = {}
        for p in procs:
            name = label(p)
            by_label[name] = by_label.get(name, 0.0) + (cpu_s(p) - before[p.pid]) / args.seconds
        total = sum(by_label.values())
        latencies = []
        for i in range(args.probes):
            time.sleep(args.lull)
            latencies.append(probe(client))
            print(f"probe {i + 1}/{args.probes}: {latencies[-1]:.2f} s", flush=True)
        return {
            "started_s": started_s,
            "first_command_s": first_command_s,
            "cores": dict(sorted(by_label.items(), key=lambda kv: -kv[1])),
            "total": total,
            "latencies": latencies,
            "processes": len(procs),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(args: argparse.Namespace, m: dict[str, str], r: dict[str, Any]) -> list[str]:
    lat = r["latencies"]
    lat_text = (
        f"median {statistics.median(lat):.2f} s, max {max(lat):.2f} s ({len(lat)} probes)"
        if lat
        else "not probed"
    )
    met = "met" if r["total"] <= TARGET_CORES else "NOT met"
    settings = ", ".join(args.env) or "none (the dev stack's own profile)"
    return [
        "",
        f"## idle (`python bench/idle.py`) · {datetime.now(UTC):%Y-%m-%d} · {m['cpu']} · "
        f"{m['cores']} cores",
        "",
        f"`billstream dev` as a user starts it (embedded PostgreSQL and Tansu, localstripe, "
        f"the ingress, every worker; {r['processes']} processes) · Python {m['python']} · "
        f"{m['os']} · settings added: {settings} · banner after {r['started_s']:.1f} s, "
        f"first command {r['first_command_s']:.2f} s.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| CPU of the whole stack, idle, over {args.seconds:g} s | **{r['total']:.3f} cores** "
        f"| ≤ {TARGET_CORES} | {met} |",
        f"| one event posted → visible in its meter's usage, after {args.lull:g} s of quiet "
        f"| {lat_text} | | |",
        "",
        "By process (cores): " + " · ".join(f"{k} {v:.3f}" for k, v in r["cores"].items()) + ".",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=60.0, help="idle window measured")
    p.add_argument("--settle", type=float, default=20.0, help="wait after the first command")
    p.add_argument("--probes", type=int, default=5, help="events timed after the window")
    p.add_argument("--lull", type=float, default=10.0, help="quiet before each probe")
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
    r = run(args)
    lines = report(args, m, r)
    print("\n".join(lines))
    if not args.no_record:
        if args.note:
            lines += ["", args.note]
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"recorded in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

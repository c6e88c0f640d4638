"""How ``billstream dev`` ends: SIGTERM stops it all, quietly; ``kill -9`` leaves no
orphans, and a busy port is refused before anything starts."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest

from workers.devstack import free_port

pytestmark = pytest.mark.slow


def dev(
    state_dir: Path,
    port: int,
    stderr: int | IO[str] = subprocess.DEVNULL,
    log_level: str = "WARNING",
) -> subprocess.Popen[str]:
    env = {**os.environ, "BILLSTREAM_STATE_DIR": str(state_dir), "BILLSTREAM_LOG_LEVEL": log_level}
    env.pop("BILLSTREAM_DATABASE_URL", None)
    env.pop("BILLSTREAM_KAFKA_BOOTSTRAP", None)
    env.pop("XDG_RUNTIME_DIR", None)  # as in containers and CI jobs
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def wait_running(proc: subprocess.Popen[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if "Ctrl-C stops everything" in line:
            return
        assert time.monotonic() < deadline, "".join(output)
    raise AssertionError("billstream dev exited early:\n" + "".join(output))


def stack(proc: subprocess.Popen[str], state_dir: Path) -> list[psutil.Process]:
    """Every process of the stack: the command's children and the PostgreSQL server
    (``pg_ctl`` detaches it) with its own children."""
    procs = psutil.Process(proc.pid).children(recursive=True)
    postmaster = psutil.Process(int((state_dir / "pg" / "postmaster.pid").read_text().split()[0]))
    return [*procs, postmaster, *postmaster.children(recursive=True)]


def alive(p: psutil.Process) -> bool:
    try:  # is_running also checks the start time: a reused pid is not our process
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


def _cleanup(proc: subprocess.Popen[str], procs: list[psutil.Process]) -> None:
    if proc.poll() is None:
        proc.kill()
    for p in procs:
        if alive(p):
            p.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_sigterm_stops_every_process_of_the_stack_quietly(state_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:  # a file, not a terminal: no colour codes
        proc = dev(state_dir, free_port(), stderr=stderr, log_level="INFO")
    procs: list[psutil.Process] = []
    try:
        wait_running(proc)
        procs = stack(proc, state_dir)
        names = " ".join(" ".join(p.cmdline()) for p in procs)
        for part in ("ingress", "worker metering", "worker alerts", "localstripe", "broker"):
            assert part in names
        assert any(p.name() == "postgres" for p in procs)

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert out.rstrip().endswith("stopped")
        assert wait_gone(procs, timeout_s=5) == []
    finally:
        _cleanup(proc, procs)
    # what a user reads: the banner and our own log lines, without library noise
    text = out + log.read_text()
    assert "Warning" not in text  # e.g. platformdirs' RuntimeDirWarning without XDG_RUNTIME_DIR
    assert "Traceback" not in text
    assert "\x1b[" not in text
    assert "callback for Task" not in text  # asyncio debug chatter while stopping
    assert "assigned to partitions" not in text  # at debug level, not info
    assert max(map(len, text.splitlines())) < 2_000


def test_kill_9_of_the_command_leaves_no_orphans(state_dir: Path) -> None:
    proc = dev(state_dir, free_port())
    procs: list[psutil.Process] = []
    try:
        wait_running(proc)
        procs = stack(proc, state_dir)
        assert len(procs) >= 10
        proc.kill()
        proc.wait()
        # the children stop gracefully (SIGTERM), within their graceful timeout
        assert wait_gone(procs, timeout_s=40) == []
    finally:
        _cleanup(proc, procs)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


def test_a_busy_port_is_refused_before_anything_starts(state_dir: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ok)  # answers 200 on /readyz
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = dev(state_dir, port, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith(f"error: port {port} is in use (")
    assert err.strip().endswith("choose another with --port")
    assert "billstream is running" not in out
    assert not state_dir.exists()  # nothing started: no database, no broker

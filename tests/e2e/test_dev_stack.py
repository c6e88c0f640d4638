"""``billstream dev`` as a user runs it: one command, then HTTP, then Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from workers.devstack import free_port

pytestmark = pytest.mark.slow


class DevStack:
    def __init__(self, state_dir: Path, port: int) -> None:
        env = {
            **os.environ,
            "BILLSTREAM_STATE_DIR": str(state_dir),
            "BILLSTREAM_INGRESS_PORT": str(port),
            "BILLSTREAM_LOG_LEVEL": "WARNING",
        }
        env.pop("BILLSTREAM_DATABASE_URL", None)
        env.pop("BILLSTREAM_KAFKA_BOOTSTRAP", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "dev"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.output: list[str] = []
        self.base = ""
        self.key = ""
        self.kafka = ""

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if m := re.search(r"ingress\s+(http://\S+)", line):
                self.base = m.group(1)
            if m := re.search(r"api key\s+(\S+)", line):
                self.key = m.group(1)
            if m := re.search(r"kafka\s+(\S+:\d+)", line):
                self.kafka = m.group(1)
            if "Ctrl-C stops everything" in line:
                return
            assert time.monotonic() < deadline, "".join(self.output)
        raise AssertionError("billstream dev exited early:\n" + "".join(self.output))

    def interrupt(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.output.append(out)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def port_closed(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def poll(check, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


def test_dev_runs_the_whole_stack_and_keeps_state_across_restarts(state_dir: Path) -> None:
    port = free_port()
    dev = DevStack(state_dir, port)
    try:
        dev.wait_ready()
        assert dev.key.startswith("bsk_") and dev.base == f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {dev.key}"}
        with httpx.Client(base_url=dev.base, headers=auth, timeout=30) as http:
            r = http.post(
                "/v1/meters",
                json={
                    "key": "tokens",
                    "event_type": "llm.completion",
                    "aggregation": "sum",
                    "value_property": "$.tokens",
                    "group_by": {"model": "$.model"},
                },
            )
            assert r.status_code == 202
            command = r.json()["status_url"]
            outcome = poll(lambda: (b := http.get(command).json())["status"] != "pending" and b)
            assert outcome["status"] == "succeeded"
            events = [
                {
                    "id": f"e{i}",
                    "source": "app",
                    "type": "llm.completion",
                    "subject": "customer-42",
                    "time": "2026-11-22T10:00:00Z",
                    "data": {"tokens": 120, "model": "m1"},
                }
                for i in range(10)
            ]
            assert http.post("/v1/events", json={"events": events}).status_code == 202

            def total() -> Decimal | None:
                body = json.loads(
                    http.get("/v1/meters/tokens/usage", params={"subject": "customer-42"}).text,
                    parse_float=Decimal,
                )
                return body["data"][0]["value"] if body["data"] else None

            assert poll(lambda: total() == 1200)
        assert dev.interrupt() == 0
        assert "stopped" in dev.output[-1]
        assert port_closed(f"127.0.0.1:{port}") and port_closed(dev.kafka)

        # again on the same state: same key, the meter and its usage are still there
        first_key = dev.key
        dev = DevStack(state_dir, port)
        dev.wait_ready()
        assert dev.key == first_key
        with httpx.Client(
            base_url=dev.base, headers={"Authorization": f"Bearer {dev.key}"}, timeout=30
        ) as http:
            usage = json.loads(http.get("/v1/meters/tokens/usage").text, parse_float=Decimal)
            assert [row["value"] for row in usage["data"]] == [1200]
        assert dev.interrupt() == 0
    finally:
        dev.kill()

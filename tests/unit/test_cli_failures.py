"""Every command that needs PostgreSQL or the broker, run against a dead address (a closed
port): one ``error:`` line naming the setting, exit code 1, no traceback, within seconds."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

COMMANDS = {
    "migrate": (["migrate"], "BILLSTREAM_DATABASE_URL"),
    "tenant create": (["tenant", "create", "acme"], "BILLSTREAM_DATABASE_URL"),
    "topics ensure": (["topics", "ensure"], "BILLSTREAM_KAFKA_BOOTSTRAP"),
    "replay": (
        [
            "replay",
            "--topic",
            "billstream.usage.v1",
            "--from",
            "earliest",
            "--reason",
            "x",
            "--group",
            "billstream-metering",
        ],
        "BILLSTREAM_KAFKA_BOOTSTRAP",
    ),
    "dlq list": (["dlq", "list"], "BILLSTREAM_KAFKA_BOOTSTRAP"),
    "dlq redrive": (
        ["dlq", "redrive", "billstream.usage.v1", "--reason", "x", "--all"],
        "BILLSTREAM_KAFKA_BOOTSTRAP",
    ),
    "quarantine list": (["quarantine", "list"], "BILLSTREAM_DATABASE_URL"),
    "quarantine show": (["quarantine", "show", "q1"], "BILLSTREAM_DATABASE_URL"),
    "lag": (["lag"], "BILLSTREAM_KAFKA_BOOTSTRAP"),
    "worker": (["worker", "metering"], "BILLSTREAM_DATABASE_URL"),
    # given a PostgreSQL and a broker of one's own, they must answer before anything starts
    "dev": (["dev", "--port", "1"], "BILLSTREAM_DATABASE_URL"),
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def billstream(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def dead(*, database: bool = True, broker: bool = True) -> dict[str, str]:
    env = {"BILLSTREAM_LOG_LEVEL": "INFO", "BILLSTREAM_LOG_FORMAT": "console"}
    if database:
        env["BILLSTREAM_DATABASE_URL"] = f"postgresql+asyncpg://u:p@127.0.0.1:{closed_port()}/db"
    if broker:
        env["BILLSTREAM_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{closed_port()}"
    return env


def assert_one_line(name: str, code: int, out: str, err: str, setting: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1, (name, code, err)
    assert len(lines) == 1, (name, err)
    assert lines[0].startswith(f"error: {setting}: cannot reach "), (name, err)
    assert "Traceback" not in err + out, name


async def test_every_command_fails_with_one_line_when_its_dependencies_are_down() -> None:
    results = await asyncio.gather(*(billstream(args, dead()) for args, _ in COMMANDS.values()))
    # each one within billstream()'s 60 s: no driver retry loop (no timing asserted here:
    # a loaded machine takes tens of seconds just to import the CLI 12 times at once)
    for (name, (_, setting)), (code, out, err) in zip(COMMANDS.items(), results, strict=True):
        assert_one_line(name, code, out, err, setting)


async def test_a_dead_database_in_a_unix_socket_url_is_one_line(tmp_path: object) -> None:
    env = {"BILLSTREAM_DATABASE_URL": f"postgresql://postgres:@/postgres?host={tmp_path}"}
    code, out, err = await billstream(["migrate"], env)
    assert_one_line("migrate", code, out, err, "BILLSTREAM_DATABASE_URL")
    assert f"{tmp_path}/.s.PGSQL.5432" in err


async def _answer_ssl_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """As PostgreSQL does: one byte (no TLS) for an SSLRequest, then nothing more."""
    await reader.readexactly(8)
    writer.write(b"N")
    await writer.drain()
    await reader.read()  # until the client closes
    writer.close()


async def test_a_worker_with_its_database_up_and_its_broker_down_fails_in_one_line() -> None:
    """The database's address answers as PostgreSQL does; the broker's does not: the worker
    names the broker, before it starts anything."""
    server = await asyncio.start_server(_answer_ssl_request, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        env = {**dead(database=False), "BILLSTREAM_DATABASE_URL":
               f"postgresql+asyncpg://u:p@127.0.0.1:{port}/db"}  # fmt: skip
        code, out, err = await billstream(["worker", "metering"], env)
    assert_one_line("worker", code, out, err, "BILLSTREAM_KAFKA_BOOTSTRAP")


async def test_an_address_that_accepts_but_never_answers_is_no_dependency() -> None:
    """A port that accepts connections and says nothing (a stopped server behind a proxy,
    a wrong port) is reported like a dead one, for the database and for the broker,
    instead of waiting out the drivers' timeouts (a minute for ``migrate``)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        database, broker = await asyncio.gather(
            billstream(
                ["migrate"], {"BILLSTREAM_DATABASE_URL": f"postgresql+asyncpg://u:p@{address}/db"}
            ),
            billstream(["lag"], {"BILLSTREAM_KAFKA_BOOTSTRAP": address}),
        )
    for (code, out, err), setting in (
        (database, "BILLSTREAM_DATABASE_URL"),
        (broker, "BILLSTREAM_KAFKA_BOOTSTRAP"),
    ):
        assert_one_line(setting, code, out, err, setting)
        assert err.rstrip().endswith("(no answer)"), err


async def test_a_database_that_answers_but_fails_is_one_line_too() -> None:
    """Past the reachability check (something listens, but it is not PostgreSQL and closes
    the connection): the driver's error is still one ``error:`` line, not a traceback."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        env = {"BILLSTREAM_DATABASE_URL": f"postgresql+asyncpg://u:p@127.0.0.1:{port}/db"}
        code, out, err = await billstream(["quarantine", "list"], env)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out

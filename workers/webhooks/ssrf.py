"""SSRF protection: where webhooks may and may not be sent.

Refused, at registration and again at connect time: non-http(s) URLs, credentials in the
URL, IP literals in unusual spellings (``http://2130706433/``, ``http://0177.0.0.1/``,
``http://0x7f.1/``), and every destination that is not a public unicast address —
loopback, private (RFC 1918, fc00::/7), shared (100.64/10), link-local (169.254/16 with the
cloud metadata service, fe80::/10), multicast, reserved/unspecified, documentation and
benchmarking ranges, and IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4, Teredo,
NAT64) unless the embedded address is itself public — except that IPv4-mapped addresses
are refused outright.

A hostname may end with one dot (``hooks.example.com.``, the fully qualified spelling of
the same name): it is stripped once, consistently, for the check at registration, the
lookup and check at connect time, the connection and the ``Host`` header; so
``http://localhost.:8080/`` delivers to ``localhost`` and ``http://127.0.0.1.:80/`` is the
loopback address it spells (refused unless allowed). Two dots, or an empty label, are not
a hostname.

At connect time a hostname is resolved once, every address is checked, and the socket is
connected to a checked address (``GuardedResolver``): there is no second lookup for a DNS
rebinding attack to slip into. ``BILLSTREAM_WEBHOOK_ALLOWED_NETWORKS`` lists networks that
are allowed anyway (development and tests: 127.0.0.0/8).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from workers.webhooks.errors import UnsafeUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

RESOLVE_TIMEOUT_S = 5.0

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_DECIMAL_OCTET = re.compile(r"(0|[1-9][0-9]{0,2})")
_NUMERIC_LABEL = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the event loop's getaddrinfo, in a thread)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in out:
            out.append(address)
    return out


@dataclass(frozen=True)
class Policy:
    """Which destinations are allowed besides public unicast addresses."""

    allowed: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def of(cls, networks: Iterable[str], resolver: Resolver | None = None) -> Policy:
        allowed = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        return cls(allowed, resolver or system_resolver)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or None when it may."""
        if any(address.version == n.version and address in n for n in self.allowed):
            return None
        return _refusal(address)


def _refusal(ip: IPAddress) -> str | None:
    """What kind of address ``ip`` is when it may not be reached ("a loopback address")."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        for embedded, kind in (
            (ip.sixtofour, "6to4"),
            (ip.teredo[1] if ip.teredo else None, "Teredo"),
            (
                ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None,
                "NAT64",
            ),
        ):
            if embedded is not None:
                reason = _refusal(embedded)
                if reason is not None:
                    return f"a {kind} address embedding {embedded}, {reason}"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address (cloud metadata services live there)"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


class Unresolvable(UnsafeUrl):
    code = "unresolvable"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # a hostname, or an IP address in its canonical form
    port: int
    address: IPAddress | None  # when the host is an IP literal


def normal_host(host: str) -> str:
    """``host`` without its one trailing dot (the DNS root): ``localhost.`` is
    ``localhost``, ``127.0.0.1.`` is ``127.0.0.1``."""
    return host[:-1] if host.endswith(".") else host


def connect_url(url: str) -> URL:
    """The URL to connect to: the registered one with its host's trailing dot removed, so
    the lookup, the connection, TLS (SNI and certificate) and the ``Host`` header all use
    the name that was checked."""
    parsed = URL(url)
    host = parsed.raw_host
    if host is not None and host.endswith(".") and not host.endswith(".."):
        return parsed.with_host(host[:-1])
    return parsed


def _ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells in standard notation, None for a hostname; refuses
    the numeric spellings browsers and libc accept but nobody means (decimal, octal, hex,
    shortened dotted forms)."""
    if ":" in host:  # only IPv6 literals (the brackets are gone) contain a colon
        if "%" in host:
            raise UnsafeUrl("IPv6 zone identifiers are not allowed in webhook URLs")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeUrl(f"{host!r} is not a valid IPv6 address") from None
    labels = normal_host(host).split(".")  # a trailing dot ("1.2.3.4.") is an address
    if labels and all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        if len(labels) == 4 and all(
            _DECIMAL_OCTET.fullmatch(label) and int(label) <= 255 for label in labels
        ):
            return ipaddress.IPv4Address(".".join(labels))
        raise UnsafeUrl(
            f"{host!r} is an IP address in an unusual notation (decimal, octal, hexadecimal "
            "or shortened); write it as four decimal numbers, or use a hostname"
        )
    if labels and _NUMERIC_LABEL.fullmatch(labels[-1]) and labels[-1].isdigit():
        raise UnsafeUrl(f"{host!r} is not a valid hostname (the last label is numeric)")
    return None


def parse(url: str) -> Target:
    """The scheme, host and port of a webhook URL; refuses what is wrong without DNS."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeUrl("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeUrl(f"not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("the URL must start with https:// or http://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("credentials in the URL are not allowed; put secrets in the path")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeUrl("the URL has no host")
    if port == 0:
        raise UnsafeUrl("port 0 is not allowed")
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeUrl(f"{host!r} is not a valid hostname") from None
    host = normal_host(host)
    if "" in host.split("."):
        raise UnsafeUrl(f"{parts.hostname!r} is not a valid hostname (an empty label)")
    address = _ip_literal(host)
    return Target(
        scheme,
        str(address) if address is not None else host,
        port or (443 if scheme == "https" else 80),
        address,
    )


async def resolve_checked(host: str, port: int, policy: Policy) -> list[IPAddress]:
    """Resolve ``host`` and check every address; all must be allowed."""
    host = normal_host(host)
    address = _ip_literal(host)
    if address is not None:
        addresses: list[IPAddress] = [address]
    else:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                resolved = await policy.resolver(host, port)
        except (OSError, TimeoutError) as e:
            raise Unresolvable(f"{host} does not resolve ({type(e).__name__}: {e})") from None
        if not resolved:
            raise Unresolvable(f"{host} does not resolve")
        addresses = [ipaddress.ip_address(a) for a in resolved]
    for a in addresses:
        reason = policy.refusal(a)
        if reason is not None:
            if address is not None:
                raise UnsafeUrl(f"{a} is {reason}; webhooks go to public addresses only")
            raise UnsafeUrl(
                f"{host} resolves to {a}, {reason}; webhooks go to public addresses only"
            )
    return addresses


async def check_url(url: str, policy: Policy, *, require_resolvable: bool = False) -> Target:
    """Registration-time check of a webhook URL (raises ``UnsafeUrl`` naming the reason).

    A hostname that does not resolve now is accepted unless ``require_resolvable``: it is
    checked again at every connection."""
    target = parse(url)
    try:
        await resolve_checked(target.host, target.port, policy)
    except Unresolvable:
        if require_resolvable:
            raise
    return target


@functools.lru_cache(maxsize=8)
def _policy_of(networks: tuple[str, ...]) -> Policy:
    return Policy.of(networks)


async def check_endpoint_url(url: str, allowed_networks: Sequence[str] = ()) -> None:
    """Raise ``UnsafeUrl`` (naming the reason) when webhooks must not be sent to ``url``:
    the registration-time check, under the system resolver, with ``allowed_networks``
    (``BILLSTREAM_WEBHOOK_ALLOWED_NETWORKS``) allowed anyway. What the ingress asks before
    it accepts an endpoint (through the face, ``workers.webhooks``)."""
    await check_url(url, _policy_of(tuple(allowed_networks)))


class RefusedDestination(Exception):
    """Raised while connecting: the destination is not allowed (nothing was sent)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for webhook connections: resolves once, checks every address,
    and hands aiohttp only checked addresses to connect to (TLS still verifies and sends
    SNI for the hostname). aiohttp does not call a resolver for IP literals: those are
    checked by ``check_literal`` before the request."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await resolve_checked(host, port, self.policy)
        except UnsafeUrl as e:
            raise RefusedDestination(e.message) from None
        return [
            {
                "hostname": host,
                "host": str(a),
                "port": port,
                "family": socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for a in addresses
        ]

    async def close(self) -> None:
        pass


def check_literal(host: str, policy: Policy) -> None:
    """Refuse ``host`` (as the HTTP client parsed it) when it is a disallowed IP literal."""
    try:
        address = ipaddress.ip_address(normal_host(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return  # a hostname: GuardedResolver checks it
    if "%" in host:
        raise RefusedDestination("IPv6 zone identifiers are not allowed")
    reason = policy.refusal(address)
    if reason is not None:
        raise RefusedDestination(f"{address} is {reason}; webhooks go to public addresses only")

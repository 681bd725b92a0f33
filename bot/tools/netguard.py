"""The SSRF guard of http_fetch: which addresses may be dialled, checked at every layer.

Three checks, each enough on its own for what it sees:

1. ``check_url`` before any I/O: scheme, userinfo, port, host shape, and IP literals in
   any spelling (``127.1``, ``0x7f.1``...), because aiohttp skips the resolver for them;
2. ``GuardedResolver`` inside the connector: every address a name resolves to must be
   allowed, and the connector dials only what it returned (DNS rebinding);
3. ``guarded_socket_factory``: the address of every socket right before ``connect``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from aiohttp import AddrInfoType, SocketFactoryType
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = frozenset({80, 443})
HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
MAX_HOST_CHARS = 253

# Ranges refused although Python may call them global (checked with Python 3.11), and
# ranges that embed an IPv4 address (NAT64, 6to4, IPv4-compatible) or are not unicast.
DENIED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # carrier-grade NAT (is_private is False)
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.8 is_global)
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/96",  # IPv4-compatible (::7f00:1 is_global)
        "64:ff9b::/96",  # NAT64 well-known prefix (64:ff9b::7f00:1 is_global)
        "64:ff9b:1::/48",  # NAT64 local-use prefix
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4 (2002:7f00:1:: is_global)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local, deprecated (fec0::1 is_global)
        "ff00::/8",  # multicast
    )
)


class AddressRefusedError(OSError):
    """The guard refused a URL, a port or an address; nothing was dialled."""


def is_public_address(address: IPAddress) -> bool:
    """True only for a global unicast address outside every denied range."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return False
    return not any(address.version == net.version and address in net for net in DENIED_NETWORKS)


class AddressPolicy(Protocol):
    """Where http_fetch may connect; injected at construction (tests pass their own)."""

    def allows_port(self, port: int) -> bool: ...

    def allows_address(self, address: IPAddress) -> bool: ...


@dataclass(frozen=True)
class PublicInternet:
    """The production policy: public addresses only, on the web's ports."""

    ports: frozenset[int] = field(default=DEFAULT_PORTS)

    def allows_port(self, port: int) -> bool:
        return port in self.ports

    def allows_address(self, address: IPAddress) -> bool:
        return is_public_address(address)


def parse_address(text: str) -> IPAddress | None:
    """An address from a resolver or a socket; None when it is not one."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _refuse(reason: str) -> AddressRefusedError:
    return AddressRefusedError(f"refused: {reason}")


def check_address(policy: AddressPolicy, host: str, port: int) -> IPAddress:
    """The parsed address if policy allows it on that port; AddressRefusedError otherwise."""
    address = parse_address(host)
    if address is None:
        raise _refuse(f"{host[:80]!r} is not an IP address")
    if not policy.allows_port(port):
        raise _refuse(f"port {port} is not allowed")
    if not policy.allows_address(address):
        raise _refuse(f"{address} is not a public internet address")
    return address


def numeric_addresses(host: str) -> list[str] | None:
    """What a numeric host spelling means to the C library (``127.1``, ``0x7f.1``...).

    None when ``host`` is a name that needs DNS; no DNS query is ever made here.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return sorted({str(info[4][0]) for info in infos})


def check_url(raw: str | URL, policy: AddressPolicy) -> URL:
    """The URL to request, or AddressRefusedError before any I/O (S01, S02, S04)."""
    try:
        url = raw if isinstance(raw, URL) else URL(raw.strip())
    except (ValueError, TypeError):
        raise _refuse("not a valid URL") from None
    if url.scheme not in SCHEMES:
        raise _refuse("only http:// and https:// URLs are fetched")
    if url.raw_user is not None or url.raw_password is not None:
        raise _refuse("URLs with a user name or password are not fetched")
    host, port = url.raw_host, url.port
    if not host or port is None:
        raise _refuse("the URL has no host")
    if not policy.allows_port(port):
        raise _refuse(f"port {port} is not allowed")
    bare = host.strip("[]").removesuffix(".")
    literal = parse_address(bare)
    numeric = [str(literal)] if literal is not None else numeric_addresses(bare)
    if numeric is not None:
        for address in numeric:
            check_address(policy, address, port)
        if literal is None or bare != host:  # 127.1, 0x7f.1, 8.8.8.8.: checked as meant
            raise _refuse("write the IP address in its usual dotted form")
    elif len(host) > MAX_HOST_CHARS or not HOST_NAME.match(host):
        raise _refuse("the host name has characters a host name cannot have")
    return url.with_fragment(None)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses the name if any answer is not allowed (S05)."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if not answers:
            raise _refuse(f"{host[:80]!r} has no address")
        checked: list[ResolveResult] = []
        for answer in answers:
            try:
                address = check_address(self._policy, answer["host"], answer["port"] or port)
            except AddressRefusedError:
                log.warning("http_fetch.refused", reason="address")
                raise
            checked.append({**answer, "host": str(address)})
        return checked

    async def close(self) -> None:
        await self._inner.close()


def plain_socket(addr_info: AddrInfoType) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


def guarded_socket_factory(
    policy: AddressPolicy, inner: SocketFactoryType = plain_socket
) -> SocketFactoryType:
    """A socket factory for the connector that checks each address before the dial."""

    def create(addr_info: AddrInfoType) -> socket.socket:
        sockaddr = addr_info[4]
        host, port = str(sockaddr[0]), int(str(sockaddr[1]))
        try:
            check_address(policy, host, port)
        except AddressRefusedError:
            log.warning("http_fetch.refused", reason="dial")
            raise
        return inner(addr_info)

    return create


def refused_reason(exc: BaseException) -> str | None:
    """The guard's reason inside an aiohttp connection error, if it was the guard."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AddressRefusedError):
            return str(current)
        current = getattr(current, "os_error", None) or current.__cause__
    return None

"""The SSRF guard's layers on their own: classifier, URL check, resolver, dialler (S01-S05)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest
from aiohttp import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from bot.tools.netguard import (
    AddressRefusedError,
    GuardedResolver,
    PublicInternet,
    check_url,
    guarded_socket_factory,
    is_public_address,
)

POLICY = PublicInternet()


class FakeResolver(AbstractResolver):
    """Answers from a script per name, one answer list per call (cycling); records calls."""

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.closed = False

    async def resolve(
        self,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,  # noqa: ARG002 - answers are scripted
    ) -> list[ResolveResult]:
        self.calls.append(host)
        script = self.answers.get(host)
        if not script:
            raise OSError(f"no such name {host}")
        addresses = script[(len([c for c in self.calls if c == host]) - 1) % len(script)]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        self.closed = True


# -- S03: which addresses are public -----------------------------------------------------


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450::1"]
)
def test_s03_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT: is_private is False
        "192.0.0.8",  # is_global is True in Python 3.11
        "192.0.2.1",
        "198.18.0.1",
        "0.0.0.0",  # noqa: S104 - an address to refuse, nothing binds here
        "0.1.2.3",
        "224.0.0.1",
        "233.252.0.1",  # multicast that is_global
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::7f00:1",  # IPv4-compatible loopback, is_global in Python 3.11
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1, is_global in Python 3.11
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1, is_global in Python 3.11
        "2002:a9fe:a9fe::1",
        "2001::1",  # Teredo
        "2001:db8::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # site-local, is_global in Python 3.11
        "ff02::1",
        "ff0e::1",
    ],
)
def test_s03_private_and_special_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


PRIVATE_V4 = st.one_of(
    *[
        st.ip_addresses(v=4, network=net)
        for net in (
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "100.64.0.0/10",
            "0.0.0.0/8",
        )
    ]
)


@given(PRIVATE_V4)
def test_s03_every_ipv6_wrapping_of_a_private_ipv4_is_refused(v4: ipaddress.IPv4Address) -> None:
    packed = int(v4)
    wrapped = [
        ipaddress.IPv6Address((0xFFFF << 32) | packed),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address((0x64FF9B << 96) | packed),  # 64:ff9b::a.b.c.d
        ipaddress.IPv6Address((0x2002 << 112) | (packed << 80)),  # 2002:aabb:ccdd::
        ipaddress.IPv6Address(packed),  # ::a.b.c.d
    ]
    assert not is_public_address(v4)
    assert not any(is_public_address(address) for address in wrapped)


@given(st.ip_addresses())
def test_s03_allowed_addresses_are_always_global_unicast(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    if is_public_address(address):
        assert address.is_global
        assert not address.is_multicast


@given(st.ip_addresses(v=4))
def test_s03_a_mapped_address_gets_the_verdict_of_its_ipv4(v4: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | int(v4))
    assert is_public_address(mapped) == is_public_address(v4)


# -- S01, S02, S04: the URL before any I/O -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http:// and https://"),
        ("ftp://example.com/file", "only http:// and https://"),
        ("gopher://example.com/", "only http:// and https://"),
        ("data:text/plain,hello", "only http:// and https://"),
        ("http+unix://%2Frun%2Fdocker.sock/info", "only http:// and https://"),
        ("javascript:alert(1)", "only http:// and https://"),
        ("//example.com/", "only http:// and https://"),
        ("http://user@example.com/", "user name or password"),
        ("https://user:pass@example.com/", "user name or password"),
        ("http://example.com:8080/", "port 8080 is not allowed"),
        ("https://example.com:22/", "port 22 is not allowed"),
        ("http:///path-only", "no host"),
        ("http://%31%32%37.0.0.1/", "characters a host name cannot have"),
        ("http://exa mple.com/", "characters a host name cannot have"),
    ],
)
def test_s01_schemes_userinfo_ports_and_odd_hosts_are_refused(url: str, reason: str) -> None:
    with pytest.raises(AddressRefusedError) as caught:
        check_url(url, POLICY)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "https://192.168.0.1/",
        "http://100.64.0.1/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
    ],
)
def test_s02_private_ip_literals_are_refused_before_any_io(url: str) -> None:
    with pytest.raises(AddressRefusedError) as caught:
        check_url(url, POLICY)
    assert "is not a public internet address" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://0x7f.1/",
        "http://127.1/",
        "http://017700000001/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f000001/",
        "http://127.0.1/",
        "http://0xa9.0xfe.0xa9.0xfe/",  # 169.254.169.254
        "http://127.0.0.1./",  # a trailing dot: aiohttp would treat it as a literal too
        "http://0x7f.1./",
    ],
)
def test_s04_other_spellings_are_checked_as_the_address_they_mean(url: str) -> None:
    with pytest.raises(AddressRefusedError) as caught:
        check_url(url, POLICY)
    assert "is not a public internet address" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/", "http://example.com/"),
        ("https://Example.COM/a/b?q=1#frag", "https://example.com/a/b?q=1"),
        ("https://8.8.8.8/", "https://8.8.8.8/"),
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),
    ],
)
def test_s01_public_http_urls_pass_without_their_fragment(url: str, expected: str) -> None:
    assert str(check_url(url, POLICY)) == expected


# -- S05: the resolver the connector uses --------------------------------------------------


async def test_s05_a_name_resolving_to_public_addresses_is_returned_as_checked() -> None:
    inner = FakeResolver({"example.com": [["93.184.216.34", "2606:2800:220:1::1"]]})
    results = await GuardedResolver(POLICY, inner).resolve("example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:2800:220:1::1"]


@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["93.184.216.34", "127.0.0.1"],  # mixed A records: one bad answer refuses the name
        ["10.1.2.3"],
        ["::ffff:169.254.169.254"],
        ["64:ff9b::a00:1"],
        [],
    ],
)
async def test_s05_any_refused_answer_refuses_the_whole_name(answers: list[str]) -> None:
    inner = FakeResolver({"evil.example": [answers]})
    with pytest.raises(AddressRefusedError):
        await GuardedResolver(POLICY, inner).resolve("evil.example", 80, socket.AF_UNSPEC)


async def test_s05_rebinding_is_checked_on_every_resolution() -> None:
    inner = FakeResolver({"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})
    guarded = GuardedResolver(POLICY, inner)
    first = await guarded.resolve("rebind.example", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in first] == ["93.184.216.34"]
    with pytest.raises(AddressRefusedError):
        await guarded.resolve("rebind.example", 80, socket.AF_UNSPEC)
    await guarded.close()
    assert inner.closed


# -- the last line: the dialler ------------------------------------------------------------


def _addr_info(host: str, port: int) -> AddrInfoType:
    if ":" in host:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


@pytest.mark.parametrize(
    ("host", "port"), [("127.0.0.1", 80), ("::1", 443), ("10.0.0.1", 80), ("8.8.8.8", 8080)]
)
def test_s02_the_dialler_refuses_what_the_policy_refuses(host: str, port: int) -> None:
    created: list[AddrInfoType] = []

    def inner(addr_info: AddrInfoType) -> socket.socket:
        created.append(addr_info)
        raise AssertionError("a refused address reached the socket factory")

    with pytest.raises(AddressRefusedError):
        guarded_socket_factory(POLICY, inner)(_addr_info(host, port))
    assert created == []


def test_s02_the_dialler_creates_sockets_for_allowed_addresses() -> None:
    created: list[AddrInfoType] = []

    def inner(addr_info: AddrInfoType) -> socket.socket:
        created.append(addr_info)
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    sock = guarded_socket_factory(POLICY, inner)(_addr_info("8.8.8.8", 443))
    sock.close()
    assert [info[4] for info in created] == [("8.8.8.8", 443)]


def test_s04_an_odd_spelling_of_a_public_address_is_refused_too() -> None:
    # aiohttp would refuse it later anyway; saying why here is clearer for the model.
    for url in ("http://0x08.0x08.0x08.0x08/", "http://8.8.8.8./"):
        with pytest.raises(AddressRefusedError) as caught:
            check_url(url, POLICY)
        assert str(caught.value) == "refused: write the IP address in its usual dotted form"

"""The outbound address guard's decisions. Nothing here opens a connection."""

from __future__ import annotations

import ipaddress

import pytest

from app.channels.base import ErrorClass
from app.channels.http_errors import failure_from_transport
from app.security.guard import AddressGuard, BlockedAddress, parse_ip_literal, url_refusal

REFUSED = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "192.0.2.10",
    "198.51.100.1",
    "203.0.113.9",
    "198.18.0.1",
    "240.0.0.1",
    "224.0.0.251",
    "239.255.255.250",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "2001:db8::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "2002:7f00:1::",  # 6to4 around 127.0.0.1
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", REFUSED)
def test_refuses_non_public_addresses(address: str) -> None:
    assert AddressGuard().refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_allows_public_addresses(address: str) -> None:
    assert AddressGuard().refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("localhost", None),
    ],
)
def test_ip_literals_in_every_spelling(host: str, expected: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::1]:8080/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://2130706433/x",
        "http://0177.0.0.1/x",
        "http://0x7f.1/x",
        "https://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_literal_urls_are_refused(url: str) -> None:
    assert url_refusal(AddressGuard(), url) is not None


def test_host_names_are_left_to_connect_time() -> None:
    assert url_refusal(AddressGuard(), "https://hooks.example.com/x") is None
    assert url_refusal(AddressGuard(), "https://localhost.example.com/x") is None
    assert url_refusal(AddressGuard(), "https://mylocalhost/x") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/x",
        "http://LocalHost:8080/x",
        "http://localhost./x",
        "http://api.localhost/x",
        "http://a.b.localhost:1/x",
        "http://localhost.localdomain/x",
        "http://ip6-localhost/x",
        "http://ip6-loopback/x",
        "http://localhost6/x",
    ],
)
def test_names_that_only_mean_loopback_are_refused(url: str) -> None:
    refusal = url_refusal(AddressGuard(), url)
    assert refusal is not None and "loopback" in refusal


def test_loopback_names_pass_when_the_guard_lets_loopback_through() -> None:
    loopback = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert url_refusal(AddressGuard(allowed=loopback), "http://localhost/x") is None
    assert url_refusal(AddressGuard(allow_private=True), "http://api.localhost/x") is None
    only_v4 = AddressGuard(allowed=loopback[:1])
    assert url_refusal(only_v4, "http://localhost4/x") is None
    assert url_refusal(only_v4, "http://ip6-localhost/x") is not None
    assert url_refusal(only_v4, "http://localhost/x") is not None, "it may resolve to ::1 too"


def test_a_blocked_address_fails_the_hop_not_the_channel() -> None:
    result = failure_from_transport(BlockedAddress("blocked address: h → 10.0.0.1 …"))
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.PERMANENT, "blocked_address")


def test_allowed_networks_and_the_off_switch() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    assert AddressGuard(allowed=[ipaddress.ip_network("127.0.0.0/8")]).refusal(loopback) is None
    assert AddressGuard(allowed=[ipaddress.ip_network("10.0.0.0/8")]).refusal(loopback) is not None
    assert AddressGuard(allow_private=True).refusal(loopback) is None


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(BlockedAddress, match=r"localhost → 127\.0\.0\.1"):
        await AddressGuard().resolve("localhost", 80)

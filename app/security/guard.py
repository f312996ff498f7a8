"""The outbound address guard: Herald never becomes a way into the network it runs in.

Every HTTP request a channel makes goes through ``GuardedTransport``: the host is resolved once,
every address it resolves to is checked, and the connection is made to the checked address
(TLS still verifies the original host name through SNI), so a DNS answer that changes between
check and connect (rebinding) cannot slip through. Redirects are never followed, so a public
URL that redirects inward gets nowhere.

Refused: every address that is not globally routable — private, loopback, link-local
(169.254.0.0/16 and fe80::/10), CGNAT (100.64.0.0/10), documentation, benchmarking, reserved,
unspecified and broadcast — plus multicast, and IPv6 forms that embed an IPv4 address
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo) when that address is refused.
``network.allowed_networks`` exempts CIDRs; ``network.allow_private_addresses: true`` turns the
guard off (for development).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp
import httpx
from yarl import URL

from app.channels.http_pool import Answer, PooledTransport

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(httpx.TransportError):
    """The request's host is, or resolves to, an address the guard refuses."""


class AddressGuard:
    def __init__(self, *, allow_private: bool = False, allowed: Iterable[IPNetwork] = ()) -> None:
        self.allow_private = allow_private
        self.allowed = tuple(allowed)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be contacted, or ``None`` when it may."""
        if self.allow_private or any(address in network for network in self.allowed):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            embedded = (
                address.ipv4_mapped
                or address.sixtofour
                or (address.teredo[1] if address.teredo else None)
            )
            if embedded is not None:
                reason = self.refusal(embedded)
                return f"{reason} (embedded in {address})" if reason else None
        if address.is_multicast:
            return f"{address} is a multicast address"
        if not address.is_global:
            return f"{address} is not a public address ({_kind(address)})"
        return None

    async def resolve(self, host: str, port: int) -> IPAddress:
        """The address to connect to for ``host``; ``BlockedAddress`` if any answer is refused."""
        literal = parse_ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except socket.gaierror as exc:
                raise httpx.ConnectError(f"host name did not resolve: {exc}") from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise BlockedAddress(f"blocked address: {host} → {reason}")
        return addresses[0]

    async def connect_to(self, host: str, port: int) -> str | None:
        """The checked address to connect to instead of ``host`` (resolved), or ``None`` when
        ``host`` is that address as written; ``BlockedAddress`` if it is refused."""
        address = str(await self.resolve(host, port))
        return None if address == host else address


def parse_ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any form a resolver accepts.

    Besides dotted quads this catches the forms ``inet_aton`` accepts (``2130706433``,
    ``0177.0.0.1``, ``0x7f.1``), which getaddrinfo would quietly turn into 127.0.0.1.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(part for part in host.split(".")) and host.replace(".", "").isalnum():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK_V6 = ipaddress.IPv6Address("::1")
LOOPBACK_NAMES: dict[str, tuple[IPAddress, ...]] = {
    "localhost": (LOOPBACK_V4, LOOPBACK_V6),
    "localhost.localdomain": (LOOPBACK_V4, LOOPBACK_V6),
    "localhost4": (LOOPBACK_V4,),
    "localhost4.localdomain4": (LOOPBACK_V4,),
    "localhost6": (LOOPBACK_V6,),
    "localhost6.localdomain6": (LOOPBACK_V6,),
    "ip6-localhost": (LOOPBACK_V6,),
    "ip6-loopback": (LOOPBACK_V6,),
}
"""Names that resolve to loopback only (the usual /etc/hosts entries), with what they name."""


def loopback_name(host: str) -> tuple[IPAddress, ...] | None:
    """The loopback addresses ``host`` can only resolve to, when it is such a name.

    ``localhost`` and every ``*.localhost`` name are loopback by RFC 6761 (6.3); the others
    are the names distributions put in /etc/hosts for 127.0.0.1 and ::1.
    """
    name = host.lower().rstrip(".")
    if name.endswith(".localhost"):
        name = "localhost"
    return LOOPBACK_NAMES.get(name)


def url_refusal(guard: AddressGuard, url: str) -> str | None:
    """Why a URL is refused before any lookup: its host is an IP literal the guard refuses, or a
    name that can only mean loopback while the guard refuses loopback. Other host names are
    checked when the request connects."""
    host = urlsplit(url).hostname
    if not host:
        return None
    literal = parse_ip_literal(host)
    if literal is not None:
        return guard.refusal(literal)
    for address in loopback_name(host) or ():
        reason = guard.refusal(address)
        if reason is not None:
            return f"{host} always resolves to loopback: {reason}"
    return None


class GuardedTransport(httpx.AsyncBaseTransport):
    """Resolves, checks, then connects to the checked address only."""

    def __init__(self, guard: AddressGuard, inner: PooledTransport) -> None:
        self.guard = guard
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.guard.allow_private:
            # The wire form (ASCII): decoding an IDNA host can fail on a malformed label.
            host = request.url.raw_host.decode("ascii")
            port = request.url.port or (443 if request.url.scheme == "https" else 80)
            address = await self.guard.connect_to(host, port)
            if address is not None:
                request.url = request.url.copy_with(host=address)
                request.extensions = {**request.extensions, "sni_hostname": host}
        return await self.inner.handle_async_request(request)

    async def exchange(
        self,
        method: str,
        url: URL,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (the pool applies it per phase)
    ) -> Answer:
        """``PooledTransport.exchange`` to the checked address, as ``handle_async_request``
        sends a request."""
        name = None
        if not self.guard.allow_private:
            host = url.raw_host or ""
            address = await self.guard.connect_to(host, url.port or 0)
            if address is not None:
                # the Host header names the URL's host, as httpx's request does
                headers = [("host", url.host_port_subcomponent or host), *headers]
                url, name = url.with_host(address), host
        return await self.inner.exchange(
            method, url, headers, body, timeout=timeout, server_hostname=name
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def _kind(address: IPAddress) -> str:
    if address in _CGNAT:
        return "shared address space (CGNAT)"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    return "reserved"

"""Herald's outbound pool against real local servers: keep-alive, TLS by the checked address,
timeouts and failures as the ``httpx`` exceptions the channels classify."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trustme

from app.channels.base import ErrorClass
from app.channels.http_errors import failure_from_transport
from app.channels.http_pool import PooledTransport
from tests.support.http_server import HttpServer, serve_http

LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8)


@dataclass
class PeerRecorder(HttpServer):
    """An HttpServer that also notes the client port each request came from."""

    peers: list[int] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.peers.append(scope["client"][1])
        await super().__call__(scope, receive, send)


def error(exc: httpx.HTTPError) -> tuple[ErrorClass, str, str]:
    failure = failure_from_transport(exc).error
    assert failure is not None
    return failure.cls, failure.code, failure.message


def post(url: str, timeout: float = 5.0, **kwargs: Any) -> httpx.Request:
    return httpx.Request(
        "POST", url, extensions={"timeout": httpx.Timeout(timeout).as_dict()}, **kwargs
    )


async def send(transport: PooledTransport, request: httpx.Request) -> httpx.Response:
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


async def test_one_after_another_the_requests_share_one_kept_alive_connection() -> None:
    async with serve_http(PeerRecorder()) as server:
        assert isinstance(server, PeerRecorder)
        transport = PooledTransport(LIMITS)
        try:
            for i in range(5):
                response = await send(transport, post(server.url("/a"), content=f"{i}".encode()))
                assert (response.status_code, response.text) == (200, "ok")
        finally:
            await transport.aclose()
    assert len(set(server.peers)) == 1
    assert [r.body for r in server.received] == [b"0", b"1", b"2", b"3", b"4"]


async def test_at_most_max_connections_at_once() -> None:
    async with serve_http(PeerRecorder()) as server:
        assert isinstance(server, PeerRecorder)
        transport = PooledTransport(httpx.Limits(max_connections=2))
        try:
            answers = await asyncio.gather(
                *(send(transport, post(server.url("/a"), content=b"x")) for _ in range(10))
            )
        finally:
            await transport.aclose()
    assert [a.status_code for a in answers] == [200] * 10
    assert len(set(server.peers)) <= 2


async def test_the_request_goes_as_built_and_the_answer_comes_back_whole() -> None:
    async with serve_http() as server:
        server.script(
            "/gz",
            (
                201,
                {"content-encoding": "gzip", "content-type": "application/json", "x-a": "1"},
                gzip.compress(b'{"ok": true}'),
            ),
        )
        transport = PooledTransport(LIMITS)
        try:
            request = post(
                server.url("/gz?q=a%2Fb"),
                content=b"body",
                headers={"Content-Type": "text/plain", "X-Id": "7", "User-Agent": "Herald/x"},
            )
            response = await send(transport, request)
        finally:
            await transport.aclose()
    received = server.received[0]
    assert (received.path, received.body) == ("/gz", b"body")
    assert received.headers["x-id"] == "7"
    assert received.headers["user-agent"] == "Herald/x"
    assert received.headers["content-length"] == "4"
    assert "cookie" not in received.headers
    assert response.status_code == 201
    assert response.json() == {"ok": True}  # decoded by httpx from the raw gzip body
    assert response.headers["x-a"] == "1"
    assert response.reason_phrase == "Created"


async def test_a_redirect_is_returned_not_followed() -> None:
    async with serve_http() as server:
        server.script("/r", (302, {"location": server.url("/elsewhere")}, b""))
        transport = PooledTransport(LIMITS)
        try:
            response = await send(transport, post(server.url("/r")))
        finally:
            await transport.aclose()
    assert response.status_code == 302
    assert [r.path for r in server.received] == ["/r"]


@asynccontextmanager
async def raw_server(handler: Any) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def failure(url: str, expected: type[httpx.HTTPError], seconds: float = 5.0) -> Any:
    """The ``expected`` error one POST to ``url`` raises, classified as a channel would."""
    transport = PooledTransport(LIMITS)
    try:
        with pytest.raises(expected) as caught:
            await send(transport, post(url, timeout=seconds))
    finally:
        await transport.aclose()
    return error(caught.value)


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    async with raw_server(silent) as port:
        found = await failure(f"http://127.0.0.1:{port}/", httpx.ReadTimeout, seconds=0.2)
    assert found[:2] == (ErrorClass.TRANSIENT, "timeout")


async def test_a_server_that_hangs_up_is_a_protocol_error() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with raw_server(rude) as port:
        found = await failure(f"http://127.0.0.1:{port}/", httpx.RemoteProtocolError)
    assert found[:2] == (ErrorClass.TRANSIENT, "connection_error")


async def test_a_refused_connection_is_a_connect_error_classified_as_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found = await failure(f"http://127.0.0.1:{port}/", httpx.ConnectError)
    assert found[1:] == ("connection_error", "connection refused")


async def test_an_unsupported_scheme_is_refused_as_httpcore_did() -> None:
    transport = PooledTransport(LIMITS)
    with pytest.raises(httpx.UnsupportedProtocol, match="unsupported protocol 'ftp://'"):
        await send(transport, post("ftp://127.0.0.1/"))
    await transport.aclose()


async def test_tls_to_the_checked_address_verifies_the_name_given_for_sni() -> None:
    """The guard connects to the address it checked and names the host for TLS: the
    certificate is verified against that name, not against the address."""
    authority = trustme.CA()
    leaf = authority.issue_cert("hooks.example.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        host = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"host:"))
        body = host.split(b":", 1)[1].strip()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    transport = PooledTransport(LIMITS, context=client_context)
    try:
        request = post(f"https://hooks.example.test:{port}/", content=b"{}")
        request.url = request.url.copy_with(host="127.0.0.1")
        request.extensions = {**request.extensions, "sni_hostname": "hooks.example.test"}
        response = await send(transport, request)
        assert (response.status_code, response.text) == (200, f"hooks.example.test:{port}")

        wrong = post(f"https://other.example.test:{port}/", content=b"{}")
        wrong.url = wrong.url.copy_with(host="127.0.0.1")
        wrong.extensions = {**wrong.extensions, "sni_hostname": "other.example.test"}
        with pytest.raises(httpx.ConnectError) as caught:
            await send(transport, wrong)
        assert error(caught.value)[:2] == (ErrorClass.CONFIG, "tls_error")
    finally:
        await transport.aclose()
        server.close()

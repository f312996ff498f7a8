"""``post_bytes_and_classify`` (the event dispatcher's POST, without httpx's objects) against
``post_and_classify`` (the channels'): the same request on the wire, the same result for every
kind of answer and failure, and the same guard."""

from __future__ import annotations

import gzip
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from app.channels.base import DeliveryResult, ErrorClass
from app.channels.http_errors import post_and_classify, post_bytes_and_classify
from app.channels.http_pool import Answer, PooledTransport, wire_url
from app.channels.outbound import Outbound
from app.runtime import HTTP_LIMITS
from app.security.guard import AddressGuard, GuardedTransport
from tests.support.http_server import serve_http

BODY = '{"type":"notification.delivered","data":{"text":"héllo"}}'.encode()
HEADERS = {"content-type": "application/json", "webhook-id": "evt_1", "X-Custom": "A"}
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
async def outbound() -> AsyncIterator[Outbound]:
    guard = AddressGuard(allowed=LOOPBACK)
    async with Outbound(GuardedTransport(guard, PooledTransport(HTTP_LIMITS))) as client:
        yield client


async def both(
    outbound: Outbound, url: str, seconds: float = 5.0
) -> tuple[DeliveryResult, DeliveryResult]:
    ours = await post_bytes_and_classify(
        outbound, wire_url(url), timeout=seconds, headers=HEADERS, content=BODY
    )
    theirs = await post_and_classify(outbound, url, timeout=seconds, headers=HEADERS, content=BODY)
    return ours, theirs


ANSWERS: dict[str, tuple[int, dict[str, str], str | bytes]] = {
    "200 text": (200, {}, "ok"),
    "200 json utf-8": (200, {"content-type": "application/json; charset=utf-8"}, '{"a":"é"}'),
    "200 quoted UTF8": (200, {"content-type": 'text/plain; charset="UTF8"'}, "é"),
    "200 latin-1": (200, {"content-type": "text/plain; charset=iso-8859-1"}, "é".encode("latin-1")),
    "200 spaced charset": (200, {"content-type": "text/plain; charset = latin-1"}, b"\xe9"),
    "200 unknown charset": (200, {"content-type": "text/plain; charset=nonsense"}, "é"),
    "200 not utf-8": (200, {}, b"\xff\xfe ok \xc3"),
    "200 bom": (200, {}, b"\xef\xbb\xbfok"),
    "200 gzip": (200, {"content-encoding": "gzip"}, gzip.compress("gzipped é".encode())),
    "200 bad gzip": (200, {"content-encoding": "gzip"}, b"not gzip at all"),
    "201 empty": (201, {}, b""),
    "204": (204, {}, b""),
    "301": (301, {"location": "http://169.254.169.254/"}, ""),
    "400": (400, {}, '{"error":"bad"}'),
    "401": (401, {}, "who are you"),
    "404": (404, {}, ""),
    "408": (408, {}, "slow"),
    "429": (429, {"retry-after": "7"}, "slow down"),
    "500": (500, {}, "down"),
    "503 gzip": (503, {"content-encoding": "gzip"}, gzip.compress(b"maintenance")),
}


@pytest.mark.parametrize("answer", list(ANSWERS.values()), ids=list(ANSWERS))
async def test_every_answer_is_classified_as_post_and_classify_does(
    outbound: Outbound, answer: tuple[int, dict[str, str], str | bytes]
) -> None:
    async with serve_http() as server:
        server.script("/e", answer, answer)
        ours, theirs = await both(outbound, server.url("/e"))
    assert ours == theirs
    first, second = server.received
    assert (first.method, first.path, first.body) == (second.method, second.path, second.body)
    assert first.headers == second.headers


async def test_a_transport_failure_is_classified_as_post_and_classify_does(
    outbound: Outbound,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused, theirs = await both(outbound, f"http://127.0.0.1:{port}/e")
    assert refused == theirs
    assert refused.error is not None
    assert (refused.error.cls, refused.error.code) == (ErrorClass.TRANSIENT, "connection_error")

    async with serve_http() as server:
        server.delay("/slow", 5)
        timed_out, theirs = await both(outbound, server.url("/slow"), seconds=0.2)
    assert timed_out == theirs
    assert timed_out.error is not None and timed_out.error.code == "timeout"


async def test_the_guard_refuses_and_resolves_as_for_the_channels() -> None:
    async with serve_http() as server:
        refusing = Outbound(GuardedTransport(AddressGuard(), PooledTransport(HTTP_LIMITS)))
        async with refusing:
            blocked, theirs = await both(refusing, f"http://localhost:{server.port}/e")
        assert blocked == theirs
        assert blocked.error is not None and blocked.error.code == "blocked_address"
        assert server.received == []

        allowing = Outbound(GuardedTransport(AddressGuard(allowed=LOOPBACK), RecordingPool()))
        async with allowing:
            ours, theirs = await both(allowing, f"http://localhost:{server.port}/e")
        assert ours == theirs and ours.delivered
        pool = allowing.transport.inner  # type: ignore[attr-defined]
        assert pool.hosts == ["127.0.0.1", "127.0.0.1"], "connected to the checked address"
        assert pool.names == ["localhost", "localhost"], "the name kept for TLS"
        assert [r.headers["host"] for r in server.received] == [f"localhost:{server.port}"] * 2


class RecordingPool(PooledTransport):
    """Herald's pool, noting where each request went."""

    def __init__(self) -> None:
        super().__init__(HTTP_LIMITS)
        self.hosts: list[str | None] = []
        self.names: list[str | None] = []

    async def exchange(self, *args: Any, **kwargs: Any) -> Answer:
        self.hosts.append(args[1].host)
        self.names.append(kwargs.get("server_hostname"))
        return await super().exchange(*args, **kwargs)


async def test_post_bytes_needs_herald_transport() -> None:
    async with Outbound(httpx.AsyncHTTPTransport()) as other:
        with pytest.raises(TypeError, match="Herald's transport"):
            await other.post_bytes(
                wire_url("http://127.0.0.1:9/"), timeout=1, headers={}, content=b""
            )


SHORT_ROAD = (
    None,
    "text/plain",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    'text/plain; charset="utf-8"',
    "text/plain; charset=utf8; format=flowed",
)


@pytest.mark.parametrize(
    "content_type",
    [
        *SHORT_ROAD,
        "text/plain; charset=latin-1",
        "text/plain; charset = utf-8",
        "text/plain; Charset=Windows-1252",
        "text/plain; charset=",
    ],
)
@pytest.mark.parametrize("body", [b"", b"ok", "é€".encode(), b"\xe9\xff", b"\xef\xbb\xbfok"])
def test_plain_text_reads_what_the_response_text_reads(
    content_type: str | None, body: bytes
) -> None:
    headers = ((b"content-type", content_type.encode()),) if content_type else ()
    answer = Answer(200, "OK", aiohttp.HttpVersion11, headers, body)
    response = answer.response()
    response.read()
    text = answer.plain_text()
    assert text is None or text == response.text
    if content_type in SHORT_ROAD:
        assert text is not None, "a UTF-8 answer is read without httpx's Response"

"""The outbound connection pool: HTTP/1.1 over aiohttp's connector, behind httpx's interface.

Channels build ``httpx.Request`` objects, read ``httpx.Response`` objects and classify
``httpx`` exceptions (app/channels/http_errors.py); what carries a request over the network is
this transport. It was httpx's own (httpcore) until a webhook POST through it cost several
times the CPU of the same POST through aiohttp's client, whose HTTP parser is written in C
and whose pool finds an idle connection by key instead of scanning every connection
(bench/results/levers.md, "aiohttp under the transport"). Everything above the transport is
unchanged: the guard (app/security/guard.py) still resolves and checks each host and hands
over the checked address with the name for TLS (``sni_hostname``); the headers, the body and
the per-phase timeouts are the request's; redirects are returned, never followed; cookies are
neither kept nor sent; the answer's body is handed over as it came (httpx decodes
``Content-Encoding``). aiohttp's errors become the ``httpx`` exceptions httpcore raised for
the same failures, the original kept as the cause.

Every request goes on the wire through ``PooledTransport.exchange``, which answers with the
``Answer`` as it came; ``handle_async_request`` wraps it for httpx. The event dispatcher calls
``exchange`` itself (through the guard: ``Outbound.post_bytes``), without httpx's objects.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import httpx
from yarl import URL

UTF8 = (b"utf-8", b"utf8")
"""The names of UTF-8, httpx's default, in a ``Content-Type``'s charset."""

SKIPPED = frozenset({"content-length", "transfer-encoding"})
"""Request headers aiohttp writes itself from the body it sends."""


class PooledTransport(httpx.AsyncBaseTransport):
    """Herald's keep-alive pool for every provider (``limits.max_connections`` at most).

    The session is opened on the first request, in the event loop that sends it, and closed by
    ``aclose``. An idle connection is closed after ``limits.keepalive_expiry``.
    """

    def __init__(self, limits: httpx.Limits, *, context: ssl.SSLContext | None = None) -> None:
        self.limits = limits
        self.context = context or verifying_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=self.limits.keepalive_expiry or 0.0,
                ssl=self.context,
                use_dns_cache=False,  # the guard resolves; an allowed host name, each time
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sni = request.extensions.get("sni_hostname")
        answer = await self.exchange(
            request.method,
            URL(str(request.url), encoded=True),
            request.headers.multi_items(),
            await request.aread(),
            timeout=_timeout(request.extensions.get("timeout", {})),
            server_hostname=sni.decode("ascii") if isinstance(sni, bytes) else sni,
            request=request,
        )
        return answer.response()

    async def exchange(
        self,
        method: str,
        url: URL,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp applies it per phase)
        server_hostname: str | None = None,
        request: httpx.Request | None = None,
    ) -> Answer:
        """One request on the wire, to ``url`` as it is (the guard has checked its host); the
        answer as it came. Raises the ``httpx`` exceptions httpcore raised for the same failures
        (naming ``request`` when there is one)."""
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request
            )
        session = self._open()
        try:
            async with session.request(
                method,
                url,
                headers=[(name, value) for name, value in headers if name not in SKIPPED],
                data=body,
                allow_redirects=False,
                server_hostname=server_hostname,
                timeout=timeout,
            ) as answer:
                content = await answer.read()
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from _cause(exc)
        except TimeoutError as exc:  # a phase's timeout, raised by aiohttp's timer
            raise httpx.ReadTimeout("timed out", request=request) from exc
        return Answer(
            answer.status, answer.reason, answer.version, tuple(answer.raw_headers), content
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as it came off the wire: its body not decoded."""

    status: int
    reason: str | None
    version: aiohttp.HttpVersion | None
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def response(self) -> httpx.Response:
        """The answer as httpx's ``Response``, not read yet (``Content-Encoding`` is decoded
        as it is read)."""
        version = self.version
        return httpx.Response(
            self.status,
            headers=list(self.raw_headers),
            stream=httpx.ByteStream(self.body),
            extensions={
                "http_version": b"HTTP/1.1"
                if version is None
                else f"HTTP/{version.major}.{version.minor}".encode(),
                "reason_phrase": (self.reason or "").encode("latin-1", "replace"),
            },
        )

    def plain_text(self) -> str | None:
        """The body as the ``Response``'s ``text`` reads it, when that takes no more than UTF-8:
        no ``Content-Encoding``, and no charset or ``charset=utf-8``; else ``None``."""
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered == b"content-encoding":
                return None
            if lowered == b"content-type" and b"charset" in (value := value.lower()):
                charset = value.partition(b"charset=")[2].split(b";", 1)[0]
                if charset.strip().strip(b'"') not in UTF8:
                    return None
        return self.body.decode("utf-8", "replace")


def wire_url(url: httpx.URL | str) -> URL:
    """The URL ``PooledTransport`` puts on the wire for a request to ``url``."""
    return URL(str(httpx.URL(url)), encoded=True)


@functools.lru_cache(maxsize=64)
def phases(timeout: float) -> dict[str, float | None]:
    """httpx's per-phase timeouts for ``timeout`` (a channel uses one or two values): what
    ``Outbound.post`` puts in its request's extensions."""
    return httpx.Timeout(timeout).as_dict()


@functools.lru_cache(maxsize=64)
def client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for ``phases(seconds)``, as a request from ``Outbound.post`` gets."""
    return _timeout(phases(seconds))


def _timeout(phases: dict[str, float | None]) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx's phases: ``connect`` covers the wait for a pooled
    connection (``pool``) and the connect; ``read`` each wait for the answer's bytes."""
    pool, connect = phases.get("pool"), phases.get("connect")
    waiting = None if pool is None or connect is None else pool + connect
    return aiohttp.ClientTimeout(
        total=None, connect=waiting, sock_connect=connect, sock_read=phases.get("read")
    )


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request | None) -> httpx.TransportError:
    """The ``httpx`` exception httpcore raised for the failure aiohttp reports as ``exc``."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):  # its str names the URL, a secret's place
        message = exc.message or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


def _cause(exc: aiohttp.ClientError) -> BaseException:
    """What the ``httpx`` exception is raised from: ``exc``, or for a socket error aiohttp
    re-raised as its own type, the socket error as Python names it (``ConnectionResetError``…),
    caused by ``exc``: classification looks for those in the chain."""
    if (
        isinstance(exc, aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and exc.errno
    ):
        error = OSError(exc.errno, exc.strerror)
        error.__cause__ = exc
        return error
    return exc


@functools.cache
def verifying_context() -> ssl.SSLContext:
    """The process's one TLS context that verifies servers against the default CA bundle.

    Loading the CA bundle is slow: one context serves every connection of every pool
    (bench/results/levers.md, "one TLS context").
    """
    return httpx.create_ssl_context()

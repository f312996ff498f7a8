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
"""

from __future__ import annotations

import functools
import ssl

import aiohttp
import httpx
from yarl import URL

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
        scheme = request.url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request
            )
        session = self._open()
        headers = [
            (name, value) for name, value in request.headers.multi_items() if name not in SKIPPED
        ]
        timeout = request.extensions.get("timeout", {})
        sni = request.extensions.get("sni_hostname")
        try:
            async with session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=await request.aread(),
                allow_redirects=False,
                server_hostname=sni.decode("ascii") if isinstance(sni, bytes) else sni,
                timeout=_timeout(timeout),
            ) as answer:
                body = await answer.read()
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from _cause(exc)
        except TimeoutError as exc:  # a phase's timeout, raised by aiohttp's timer
            raise httpx.ReadTimeout("timed out", request=request) from exc
        return httpx.Response(
            answer.status,
            headers=list(answer.raw_headers),
            stream=httpx.ByteStream(body),
            extensions={
                "http_version": _version(answer.version),
                "reason_phrase": (answer.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _version(version: aiohttp.HttpVersion | None) -> bytes:
    return b"HTTP/1.1" if version is None else f"HTTP/{version.major}.{version.minor}".encode()


def _timeout(phases: dict[str, float | None]) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx's phases: ``connect`` covers the wait for a pooled
    connection (``pool``) and the connect; ``read`` each wait for the answer's bytes."""
    pool, connect = phases.get("pool"), phases.get("connect")
    waiting = None if pool is None or connect is None else pool + connect
    return aiohttp.ClientTimeout(
        total=None, connect=waiting, sock_connect=connect, sock_read=phases.get("read")
    )


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
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

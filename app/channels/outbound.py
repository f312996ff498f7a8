"""Herald's outbound HTTP client: each request goes straight onto the transport.

Herald's channels only ever send one request at a time, never follow a redirect, keep no
cookies and use no auth flow beyond HTTP Basic. ``httpx.AsyncClient.send`` runs every request
through layers for all of those anyway: URL and header merging, an auth generator, a redirect
loop, and a cookie jar that rebuilds every answer as urllib request and response objects.
Passing them by (httpx's own ``Request`` and ``Response``, on the same transport) saves CPU on
every POST (bench/results/levers.md, "`Outbound`: each POST"). What reaches the provider is what
httpx's client sends (its default headers, the timeout for each phase, the transport's errors as
``httpx`` exceptions), except that Herald names itself: ``User-Agent: Herald/<version>``.
``post_bytes`` sends the same request without httpx's objects at all, for the event
dispatcher.
"""

from __future__ import annotations

import base64
from importlib import metadata
from types import TracebackType
from typing import Any

import httpx
from yarl import URL

from app import __version__
from app.channels.http_pool import Answer, PooledTransport, client_timeout, phases
from app.security.guard import GuardedTransport


def herald_version() -> str:
    """The installed distribution's version; the source tree's when Herald is not installed."""
    try:
        return metadata.version("herald")
    except metadata.PackageNotFoundError:
        return __version__


USER_AGENT = f"Herald/{herald_version()}"

DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": USER_AGENT,
}
"""What every request carries unless a channel says otherwise: ``httpx.AsyncClient``'s defaults,
with Herald's own ``User-Agent`` instead of ``python-httpx/<version>``."""


def _fields(headers: dict[str, str] | None) -> dict[str, str]:
    """A request's headers: ``DEFAULT_HEADERS`` and then ``headers``, case-insensitively, as
    the client's merge does."""
    fields = dict(DEFAULT_HEADERS)
    if headers:
        fields.update((name.lower(), value) for name, value in headers.items())
    return fields


class Outbound:
    """POSTs to providers over ``transport`` (Herald's guarded, sharded pool in production)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def post(
        self,
        url: httpx.URL | str,
        *,
        timeout: float,  # noqa: ASYNC109 (httpx applies it to each phase of the request)
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One POST; the answer with its body read. Redirects are returned, not followed.

        Raises what the transport raises (``httpx.HTTPError`` subclasses) and
        ``httpx.InvalidURL`` for a URL httpx cannot parse.
        """
        fields = _fields(headers)
        if auth is not None:
            user, password = auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            fields["authorization"] = f"Basic {token}"
        request = httpx.Request(
            "POST",
            url,
            headers=fields,
            content=content,
            json=json,
            data=data,
            extensions={"timeout": phases(timeout)},
        )
        response = await self.transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def post_bytes(
        self,
        url: URL,
        *,
        timeout: float,  # noqa: ASYNC109 (as ``post``'s)
        headers: dict[str, str],
        content: bytes,
    ) -> Answer:
        """The POST ``post`` sends with ``content`` and ``headers``, to ``url`` (a URL as
        ``wire_url`` makes it), answered as it came off the wire: without httpx's request and
        response objects, for a caller that reads only the answer's status and text
        (bench/results/levers.md, "events POSTed without httpx's objects"). Raises what
        ``post`` raises.

        Needs Herald's own transport (``GuardedTransport`` or ``PooledTransport``).
        """
        transport = self.transport
        if not isinstance(transport, GuardedTransport | PooledTransport):
            raise TypeError(f"post_bytes needs Herald's transport, not {transport!r}")
        return await transport.exchange(
            "POST", url, _fields(headers).items(), content, timeout=client_timeout(timeout)
        )

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

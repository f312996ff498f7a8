"""Pure ASGI middleware: request ids, the body-size limit and the HTTP metrics."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Protocol

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs, metrics
from app.api.problems import problem_response, unexpected

logger = logging.getLogger("herald.api")

CLIENT_CLOSED = 499
"""The status counted (nginx's "client closed request") when the client left mid-request."""

MAX_BODY = 1024 * 1024
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _TooLarge(HTTPException):
    """A streamed body passed the limit while the app was reading it.

    An ``HTTPException`` on purpose: FastAPI's body reader turns any other exception from
    ``receive`` into a 400, but re-raises this one, so the problem handler answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit), headers={"Connection": "close"})


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class FastRoad(Protocol):
    """A route served in ``Edge``, in front of the app (``FastAccept``): it answers what it can
    and hands the rest to ``app``, the app behind ``Edge``."""

    def serves(self, scope: Scope) -> bool: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None: ...


class Edge:
    """What every request passes through, in one layer instead of three (each layer wraps
    ``send`` and ``receive`` once more; bench/results/levers.md, "one `Edge` middleware"):

    - the request id: ``X-Request-ID`` (or a new one, 32 random hex digits; an id that is too
      long or has odd characters is replaced) on every log line of the request and echoed in
      the response;
    - the body limit: a body over ``limit`` is refused with 413 before anything parses it, at
      once for a declared ``Content-Length``, as it streams for a chunked one;
    - the HTTP metrics: requests counted and timed by method, route template and status (never
      the raw path), each combination's series looked up once;
    - the fast ``road``, if given: the requests it ``serves`` go to it instead of the app (it
      passes on to the app what it does not answer), skipping the app's middleware and
      routing (bench/results/levers.md, "`FastAccept` served from `Edge`");
    - an error nothing else handled: logged once with the request id, answered 500;
    - a client that hangs up before it is answered (before its body arrived, or while its
      request waits with ``?wait=``): no answer (nobody is there to read it), one INFO line,
      counted with status 499.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, road: FastRoad | None = None) -> None:
        self.app = app
        self.limit = limit
        self.road = road

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        given = b""
        declared_too_large = False
        for name, value in scope["headers"]:
            if name == b"x-request-id" and not given:  # the first, as before
                given = value
            elif name == b"content-length":
                declared_too_large = not value.isdigit() or int(value) > self.limit
        rid = given.decode("latin-1")
        if not _REQUEST_ID.match(rid):
            rid = os.urandom(16).hex()
        status = 500
        started = False
        seen = 0

        async def edge_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode("latin-1")),
                ]
            await send(message)

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        token = logs.request_id.set(rid)
        try:
            if declared_too_large:
                await self._refuse(scope, receive, edge_send)
            else:
                try:
                    if self.road is not None and self.road.serves(scope):
                        await self.road(scope, limited_receive, edge_send, self.app)
                    else:
                        await self.app(scope, limited_receive, edge_send)
                except _TooLarge:
                    if not started:
                        await self._refuse(scope, receive, edge_send)
                except ClientDisconnect:
                    status = CLIENT_CLOSED
                    logger.info("client disconnected before it was answered")
                except Exception as exc:
                    if started:
                        raise
                    # Answered here, not by Starlette's outermost layer: that one would answer
                    # too, then re-raise for the server to log a second time.
                    await unexpected(exc)(scope, receive, edge_send)
        finally:
            logs.request_id.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", None) or "(unmatched)"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            metrics.series(metrics.http_requests, method, path, str(status)).inc()
            metrics.series(metrics.http_request_duration, method, path).observe(
                time.perf_counter() - began
            )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(413, _too_large(self.limit), headers={"Connection": "close"})
        await response(scope, receive, send)

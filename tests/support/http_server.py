"""A real HTTP server on loopback for tests: answers from a script and records every request.

It runs uvicorn in the test's own event loop, so a test can script answers per path
(``sink.script("/hook", (500, {}, "down"), (200, {}, "ok"))``), then read back what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float
    """``time.time()`` when the request arrived, by the server's own clock."""

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], str | bytes | dict[str, Any] | list[Any]]


@dataclass
class HttpServer:
    port: int = 0
    default: Answer = (200, {}, "ok")
    received: list[Received] = field(default_factory=list)
    _scripts: dict[str, deque[Answer]] = field(default_factory=lambda: defaultdict(deque))
    _delays: dict[str, float] = field(default_factory=dict)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], float] = time.time
    """What ``Received.at`` is read from (a test's clock, to see the waits it moved on)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with these, in order; then the default."""
        self._scripts[path].extend(answers)

    def delay(self, path: str, seconds: float) -> None:
        """Wait this long before answering on ``path`` (to provoke timeouts)."""
        self._delays[path] = seconds

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        body = await request.body()
        self.received.append(
            Received(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                at=self.clock(),
            )
        )
        delay = self._delays.get(request.url.path)
        if delay:
            # Cut short when the server stops, so a test never waits out a long delay.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        status, headers, content = await self.answer(request, body, receive)
        if isinstance(content, dict | list):
            payload = json.dumps(content).encode()
            headers = {"content-type": "application/json", **headers}
        else:
            payload = content.encode() if isinstance(content, str) else content
        await Response(payload, status_code=status, headers=headers)(scope, receive, send)

    async def answer(self, request: Request, body: bytes, receive: Any) -> Answer:
        """The answer to a request: the next scripted for its path, else the default.
        A subclass that acts as a provider answers the rest itself (``receive`` tells it when
        the client goes away)."""
        queue = self._scripts.get(request.url.path)
        return queue.popleft() if queue else self.default

    def scripted(self, path: str) -> bool:
        """Whether answers are still scripted for ``path``."""
        return bool(self._scripts.get(path))


@asynccontextmanager
async def serve_http(server: HttpServer | None = None, **options: Any) -> AsyncIterator[HttpServer]:
    """Run ``server`` on a free loopback port until the block ends; ``options`` go to
    ``uvicorn.Config`` (``ssl_certfile`` and ``ssl_keyfile`` for TLS)."""
    app = server or HttpServer()
    options = {"log_level": "warning", "lifespan": "off", **options}
    async with serve_asgi(app, **options) as port:
        app.port = port
        try:
            yield app
        finally:
            app._closing.set()  # before the server stops: cut short any delayed answer


class _Server(uvicorn.Server):
    """uvicorn's server, stopping as soon as it can: its main loop looks whether to stop every
    0.1 s and its shutdown pauses 0.1 s after asking the connections to close, 0.1-0.2 s in
    all that every test with an HTTP peer waited at its end."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = asyncio.Event()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.1)

    def stop(self) -> None:
        self.should_exit = True
        self.stopping.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's steps, waiting only while a connection or an answer is still open."""
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # an idle one closes now, a busy one after its answer
        # uvicorn has no event for "the last connection closed": look every 5 ms
        while self.server_state.connections or self.server_state.tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@asynccontextmanager
async def serve_asgi(app: ASGIApp, **options: Any) -> AsyncIterator[int]:
    """Run any ASGI app under uvicorn on a free loopback port; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, access_log=False, **options)
    uv = _Server(config)
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield uv.servers[0].sockets[0].getsockname()[1]
    finally:
        uv.stop()
        await task

"""A local Telegram Bot API for the inbound tests: ``getUpdates`` with long polling, ``getMe``,
and ``sendMessage`` / ``answerCallbackQuery`` recorded as the chat would see them.

It keeps Telegram's semantics (https://core.telegram.org/bots/api#getupdates): updates wait in
a queue per bot; ``getUpdates`` answers those with ``update_id >= offset`` (all of them without
an offset) and forgets the ones below ``offset`` (they are confirmed); with none waiting it
holds the request until one is pushed, its ``timeout`` runs out, or the client goes away. A
second ``getUpdates`` for a bot while one is held ends the held one with 409 Conflict, as
Telegram does ("terminated by other getUpdates request"); every such conflict and the most
requests ever held at once for a bot are counted, so a test can see two pollers.

Scripted answers (``HttpServer.script``) still come first, so a test can make ``getUpdates``
answer 502 a few times; ``stop`` and ``start`` take the server off its port and back (the
client then sees connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.requests import Request

from tests.support.http_server import Answer, HttpServer

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
BOT_USERNAME = "herald_test_bot"
CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"  # noqa: E501


def ok(result: Any) -> Answer:
    return (200, {}, {"ok": True, "result": result})


def error(code: int, description: str) -> Answer:
    return (code, {}, {"ok": False, "error_code": code, "description": description})


@dataclass
class _Poll:
    """A ``getUpdates`` held for a bot."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    conflict: bool = False


@dataclass
class FakeTelegram(HttpServer):
    queues: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    """Updates not confirmed yet, per bot token."""
    held: dict[str, list[_Poll]] = field(default_factory=lambda: defaultdict(list))
    max_held: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    conflicts: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(500_000))
    _pushed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    # --- what a test does ----------------------------------------------------------------

    def push(self, update: dict[str, Any], token: str = TOKEN) -> int:
        """Queue an update (its ``update_id`` is given here); wakes held polls."""
        update_id = next(self._ids)
        self.queues[token].append({"update_id": update_id, **update})
        self._pushed.set()
        self._pushed = asyncio.Event()
        return update_id

    def message(
        self, chat: str | int, text: str, *, sender: str = "alice", token: str = TOKEN
    ) -> int:
        """A person in ``chat`` sends ``text`` to the bot."""
        return self.push(
            {
                "message": {
                    "message_id": next(self._ids),
                    "from": {"id": 4242, "is_bot": False, "first_name": "Al", "username": sender},
                    "chat": {"id": int(chat), "type": "supergroup", "title": "Ops"},
                    "date": int(time.time()),
                    "text": text,
                }
            },
            token,
        )

    def press(self, chat: str | int, data: str, *, token: str = TOKEN) -> int:
        """A person presses an inline button whose ``callback_data`` is ``data``."""
        return self.push(
            {
                "callback_query": {
                    "id": f"cq{next(self._ids)}",
                    "from": {"id": 4242, "is_bot": False, "first_name": "Al", "username": "alice"},
                    "chat_instance": "-77",
                    "message": {
                        "message_id": 7,
                        "chat": {"id": int(chat), "type": "supergroup"},
                        "date": 1767225600,
                    },
                    "data": data,
                }
            },
            token,
        )

    def calls(self, method: str, token: str = TOKEN) -> list[dict[str, Any]]:
        """The JSON bodies of the requests to ``method``, in order."""
        path = f"/bot{token}/{method}"
        return [json.loads(r.body or b"{}") for r in self.received if r.path == path]

    def said(self, chat: str | int, token: str = TOKEN) -> list[str]:
        """What the bot sent to ``chat`` (``sendMessage``)."""
        return [
            c["text"] for c in self.calls("sendMessage", token) if str(c["chat_id"]) == str(chat)
        ]

    def toasts(self, token: str = TOKEN) -> list[str]:
        """What the bot answered to button presses (``answerCallbackQuery``)."""
        return [c.get("text", "") for c in self.calls("answerCallbackQuery", token)]

    def poll_times(self, token: str = TOKEN) -> list[float]:
        path = f"/bot{token}/getUpdates"
        return [r.at for r in self.received if r.path == path]

    # --- the Bot API -------------------------------------------------------------------------

    async def answer(self, request: Request, body: bytes, receive: Any) -> Answer:
        path = request.url.path
        if self.scripted(path) or not path.startswith("/bot"):
            return await super().answer(request, body, receive)
        token, _, method = path.removeprefix("/bot").partition("/")
        payload = json.loads(body) if body else {}
        if method == "getUpdates":
            return await self._get_updates(token, payload, receive)
        if method == "getMe":
            return ok(
                {"id": 123456789, "is_bot": True, "first_name": "Herald", "username": BOT_USERNAME}
            )
        if method == "sendMessage":
            return ok(
                {
                    "message_id": next(self._ids),
                    "chat": {"id": payload.get("chat_id")},
                    "date": 1767225600,
                    "text": payload.get("text"),
                }
            )
        if method == "answerCallbackQuery":
            return ok(True)
        return error(404, "Not Found")

    async def _get_updates(self, token: str, payload: dict[str, Any], receive: Any) -> Answer:
        offset = payload.get("offset")
        queue = self.queues[token]
        if isinstance(offset, int) and offset > 0:
            queue[:] = [u for u in queue if u["update_id"] >= offset]  # confirmed: forgotten
        for earlier in self.held[token]:
            earlier.conflict = True
            earlier.ended.set()
            self.conflicts += 1
        poll = _Poll()
        held = self.held[token]
        held.append(poll)
        self.max_held[token] = max(self.max_held[token], len(held))
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            deadline = asyncio.get_running_loop().time() + float(payload.get("timeout") or 0)
            while not queue and not poll.ended.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0 or gone.done():
                    break
                pushed = asyncio.ensure_future(self._pushed.wait())
                ended = asyncio.ensure_future(poll.ended.wait())
                await asyncio.wait(
                    (pushed, ended, gone), timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                pushed.cancel()
                ended.cancel()
        finally:
            gone.cancel()
            held.remove(poll)
        if poll.conflict:
            return error(409, CONFLICT)
        limit = int(payload.get("limit") or 100)
        return ok(list(queue[:limit]))

    # --- the server --------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve on ``port`` (a free one the first time)."""
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=self.port,
            access_log=False,
            log_level="warning",
            lifespan="off",
        )
        server = self._server = uvicorn.Server(config)
        task = self._task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Leave the port: connections are refused until ``start``. Held polls end first."""
        for polls in self.held.values():
            for poll in polls:
                poll.ended.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None


async def _disconnect(receive: Any) -> None:
    """Returns when the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


@asynccontextmanager
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    try:
        yield fake
    finally:
        fake._closing.set()
        with contextlib.suppress(Exception):
            await fake.stop()

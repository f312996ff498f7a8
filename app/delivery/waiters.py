"""Requests held until a notification reaches a final state (``?wait=``), and how they hear of it.

Nothing polls. A request registers a waiter (an ``asyncio.Event``) under the notification's id,
reads the state once (so a change made before it registered is not missed), then sleeps until
it is woken or its time is up. Whatever writes a final state announces it
(``Runtime.announce_final``): the worker after saving a round whose outcome is final, the API
after a cancel. The announcement wakes this process's waiters at once; on PostgreSQL it is also
sent to every other process as ``NOTIFY herald_final`` (``FinalAnnouncer``), which each API
process that holds waiters hears on a ``LISTEN`` connection of its own (``Waiters``), opened
when the first request waits and supervised like the worker's listener.

A NOTIFY may be lost (the listener was reconnecting, the announcement failed): each (re)connect
wakes every waiter here to read its state again, and a waiter always reads the state once more
when its time is up, so a lost wake-up costs latency, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator

from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.delivery.listener import Heard
from app.delivery.outage import MAX_BACKOFF
from app.delivery.supervise import supervised
from app.store.db import brief
from app.store.sql import NOTIFY_PAYLOAD_LIMIT, notify_final

logger = logging.getLogger("herald.wait")

MAX_WAITERS = 1000
"""Requests one process holds waiting at once; more are answered at once (``busy``)."""
MAX_WAITERS_PER_KEY = 250
"""Requests one API key may hold waiting at once in one process, so one caller cannot take
every place."""

Listen = Callable[[Heard, asyncio.Event], Awaitable[None]]
"""A listener on ``herald_final`` (``listener.listen_to``): tells ``heard`` what it hears until
the event is set."""


class Waiters:
    """This process's waiting requests, by notification id."""

    def __init__(
        self,
        listen: Listen | None = None,
        *,
        limit: int = MAX_WAITERS,
        per_key: int = MAX_WAITERS_PER_KEY,
    ) -> None:
        """``listen``: how to hear other processes' announcements (``None`` on SQLite, where
        only this process's worker writes)."""
        self.limit = limit
        self.per_key = per_key
        self._listen = listen
        self._by_id: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._by_key: Counter[str] = Counter()
        self._count = 0
        self._stop = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self.closing = False
        """Set by ``stop_waiting``: the server is shutting down."""

    def __len__(self) -> int:
        return self._count

    @contextlib.contextmanager
    def watch(self, notification_id: uuid.UUID, key: str | None) -> Iterator[asyncio.Event | None]:
        """A waiter for ``notification_id``, set when it may have become final, for the block;
        ``None`` when this process (or API key ``key``) holds as many waiters as it may."""
        full = self._count >= self.limit or (key is not None and self._by_key[key] >= self.per_key)
        if full or self.closing:
            yield None
            return
        woken = asyncio.Event()
        self._by_id.setdefault(notification_id, set()).add(woken)
        if key is not None:
            self._by_key[key] += 1
        self._count += 1
        metrics.waiters.set(self._count)
        self._start_listening()
        try:
            yield woken
        finally:
            self._count -= 1
            metrics.waiters.set(self._count)
            if key is not None:
                self._by_key[key] -= 1
                if not self._by_key[key]:
                    del self._by_key[key]
            waiting = self._by_id[notification_id]
            waiting.discard(woken)
            if not waiting:
                del self._by_id[notification_id]

    def wake(self, ids: Iterable[uuid.UUID]) -> None:
        """Wake the waiters of ``ids`` (notifications just written in a final state)."""
        for notification_id in ids:
            for woken in self._by_id.get(notification_id, ()):
                woken.set()

    def wake_all(self) -> None:
        """Wake every waiter, to read its state again: an announcement may have been missed."""
        for waiting in self._by_id.values():
            for woken in waiting:
                woken.set()

    def stop_waiting(self) -> None:
        """End every wait now and take no new one: the server is shutting down, and a waiting
        request would hold its drain for up to the longest wait."""
        self.closing = True
        self.wake_all()

    def heard(self, payload: str | None) -> None:
        """What the listener heard: ids as ``FinalAnnouncer`` sends them, or ``None`` when it
        has just (re)connected."""
        if payload is None:
            self.wake_all()
            return
        ids = []
        for part in payload.split(","):
            with contextlib.suppress(ValueError):
                ids.append(uuid.UUID(part))
        self.wake(ids)

    def _start_listening(self) -> None:
        if self._listen is None or self._listener is not None:
            return
        listen = self._listen
        self._listener = asyncio.create_task(
            supervised(
                "wait_listener", lambda stop: listen(self.heard, stop), self._stop, cap=MAX_BACKOFF
            ),
            name="herald-wait-listener",
        )

    async def aclose(self) -> None:
        """Stop listening (the process is closing)."""
        self._stop.set()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)


def payloads(ids: list[uuid.UUID]) -> Iterator[str]:
    """``ids`` comma-separated, in as few ``NOTIFY`` payloads as fit."""
    per_payload = (NOTIFY_PAYLOAD_LIMIT + 1) // 37  # 36 characters and a comma each
    for start in range(0, len(ids), per_payload):
        yield ",".join(str(notification_id) for notification_id in ids[start : start + per_payload])


class FinalAnnouncer:
    """Sends ``NOTIFY herald_final`` for notifications just written in a final state.

    Right after their save has committed, never before: a waiter woken earlier would read the
    old state. Ids announced while one ``NOTIFY`` is being sent go together in the next one, as
    the worker's group commit does with saves (saves.py), so a busy worker sends one statement
    per batch of rounds, not one per round. Nothing waits for it: a failure is logged and the
    waiters concerned answer when their time is up.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._ids: list[uuid.UUID] = []
        self._sender: asyncio.Task[None] | None = None

    def announce(self, notification_id: uuid.UUID) -> None:
        self._ids.append(notification_id)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="herald-announce-final")

    async def _send(self) -> None:
        while self._ids:
            batch, self._ids = self._ids, []
            try:
                for payload in payloads(batch):
                    await notify_final(self.engine, payload)
            except Exception as exc:
                logger.warning(
                    "could not announce %d final notifications to waiting requests: %s",
                    len(batch),
                    brief(exc),
                )

    async def aclose(self, grace: float) -> None:
        """Send what is queued, for up to ``grace`` seconds."""
        if self._sender is not None and not self._sender.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sender), grace)
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)

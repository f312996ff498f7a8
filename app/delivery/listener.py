"""Wake-ups over PostgreSQL ``LISTEN/NOTIFY``: news reaches every process at once.

Three channels carry it. On ``herald_due`` the API (any process) runs ``pg_notify('herald_due',
'')`` in the transaction that makes work due; PostgreSQL delivers it on commit to every
listening worker, which sets its wake-up event. ``herald_events`` is the same for the event
dispatchers: sent in every transaction that writes event deliveries (an accept, a worker's
save of its rounds, a cancel, a redelivery). On ``herald_final`` a worker names the
notifications whose final state it has just written, for the requests waiting on them
(``?wait=``, waiters.py) in every API process.

A listener holds one dedicated connection; when it cannot connect or the connection drops it
raises, and its supervisor (supervise.py) starts it again with backoff. While it is down, the
poll (``HERALD_POLL_INTERVAL``) still finds the work, and a waiting request still answers when
its wait runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

CONNECT_TIMEOUT = 10.0


def asyncpg_dsn(database_url: str) -> str:
    """A DSN asyncpg understands, from a ``postgresql+asyncpg://`` SQLAlchemy URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


Heard = Callable[[str | None], None]
"""Called with each notification's payload, and with ``None`` once listening: whatever was
sent before then was missed."""


async def listen(
    database_url: str, channel: str, wakeup: asyncio.Event, stop: asyncio.Event
) -> None:
    """Set ``wakeup`` on every notification on ``channel`` until ``stop``, and once listening
    (work may have become due while nobody was); ``ConnectionError`` if the connection drops
    before."""
    await listen_to(database_url, channel, lambda _: wakeup.set(), stop)


async def listen_to(database_url: str, channel: str, heard: Heard, stop: asyncio.Event) -> None:
    """Tell ``heard`` every notification on ``channel`` until ``stop``; ``ConnectionError`` if
    the connection drops before."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=CONNECT_TIMEOUT)
    try:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(channel, lambda *args: heard(args[3]))
        heard(None)
        await _first(stop.wait(), lost.wait())
        if not stop.is_set():
            raise ConnectionError("LISTEN connection lost")
    finally:
        if not connection.is_closed():
            connection.terminate()


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()

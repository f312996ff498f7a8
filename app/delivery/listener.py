"""Wake-ups over PostgreSQL ``LISTEN/NOTIFY``: new due work reaches every worker at once.

The API (any process) runs ``pg_notify('herald_due', '')`` in the transaction that makes work
due; PostgreSQL delivers it on commit to every listening worker, which sets its wake-up event.
The listener holds one dedicated connection and reconnects with backoff when it drops; while it
is down, the poll (``HERALD_POLL_INTERVAL``) still finds the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from app.delivery.outage import Outage
from app.store.repositories import DUE_CHANNEL

logger = logging.getLogger("herald.listener")


def asyncpg_dsn(database_url: str) -> str:
    """A DSN asyncpg understands, from a ``postgresql+asyncpg://`` SQLAlchemy URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(database_url: str, wakeup: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``wakeup`` on every notification until ``stop``; reconnects on its own."""
    dsn = asyncpg_dsn(database_url)
    # The worker's loop reports the database's outages; this one only its first and last line.
    outage = Outage(logger, "LISTEN connection", step_level=logging.DEBUG)
    while not stop.is_set():
        lost = asyncio.Event()
        try:
            connection = await asyncpg.connect(dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            await _sleep_until(stop, outage.failed(exc))
            continue
        try:
            connection.add_termination_listener(lambda _, lost=lost: lost.set())
            await connection.add_listener(DUE_CHANNEL, lambda *_: wakeup.set())
            outage.recovered()
            wakeup.set()  # work may have become due while we were not listening
            await _first(stop.wait(), lost.wait())
            if lost.is_set() and not stop.is_set():
                logger.warning("LISTEN connection lost; reconnecting")
        except (OSError, asyncpg.PostgresError) as exc:
            logger.warning("LISTEN failed (%s); reconnecting", exc)
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


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

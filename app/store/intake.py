"""How newly accepted notifications are stored: the API's hot path, so no ORM unit of work.

One implementation for a single POST and a batch alike: ``Intake.add_many`` stores the rows,
the idempotency key of their request, their ``notification.accepted`` events (the outbox's
rows, when anybody takes them) and the wake-up for listening workers atomically, and a taken
key comes out as ``DuplicateKey`` whichever the number of rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.delivery.saves import GroupSaver
from app.store.sql import (
    DUE_CHANNEL,
    EVENT_DELIVERIES,
    EVENTS,
    EVENTS_CHANNEL,
    IDEMPOTENCY_KEYS,
    NOTIFICATIONS,
    OutboxRows,
    Parking,
    PreparedInsert,
    Row,
    driver_connection,
    in_sqlite_transaction,
)

MANY = 2
"""``Intake``'s statements are for no rows, one, or this many or more."""

PARKED = 4
"""Pooled connections kept for the next accepts between two (``Parking``)."""

UNIQUE_VIOLATION = "23505"
"""PostgreSQL's SQLSTATE for a duplicate key."""


class DuplicateKey(Exception):
    """The idempotency key is already taken: another request stored it first."""


@dataclass(eq=False, slots=True)
class _Added:
    """One ``add_many`` call's rows, waiting for SQLite's next group commit."""

    rows: Sequence[Mapping[str, Any]]
    keys: Sequence[Row]
    events: OutboxRows | None


class Intake:
    """Stores newly accepted notifications with the idempotency key of their request.

    On PostgreSQL every call is one statement in autocommit on the pooled driver connection:
    the rows, the key and the ``NOTIFY`` to listening workers in one CTE, so one round trip and
    no ``BEGIN``/``COMMIT``, a fraction of the ORM's CPU (bench/results/levers.md, "`Intake`:
    one CTE statement"). One row goes as ``VALUES``, the cheapest for the single POST; several
    as ``unnest`` of an array per column, one statement text for any number of rows (a
    ``VALUES`` list as long as the batch was a new statement at every size, and slower:
    bench/results/levers.md, "batches as `unnest`"). Values pass through the same SQLAlchemy
    bind processors the ORM applies, so rows read back identically. Events, when there are
    any, join the same statement as ``unnest`` inserts into ``events`` and
    ``event_deliveries``, and a ``NOTIFY herald_events`` tells the event dispatchers; without
    them the statement is the one it would be with no events feature at all.

    On SQLite (no ``LISTEN``: the service wakes its in-process worker) one writer commits the
    calls that arrive together (``GroupSaver``, as the worker saves its rounds): while one
    transaction is being written the next calls queue, and they go in the next one, each
    table's rows in one ``executemany`` of the same one-row ``INSERT``, the whole transaction
    in one call to the connection's thread. Each call returns once its rows are committed; a
    transaction that fails (a taken key) is written again one call per transaction, so a
    call's ``DuplicateKey`` is its own (bench/results/levers.md, "SQLite").

    On PostgreSQL the accepts take their turn for a pooled connection in the order they
    arrive (``_turns``, a FIFO semaphore as wide as the pool): at saturation the pool itself
    hands a returned connection to whichever task asks next, so some requests waited out
    several turns: a long ingest tail
    (bench/results/levers.md, "Accepts take turns for a connection").
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        pool = engine.pool
        self._turns = asyncio.Semaphore(pool.size() if isinstance(pool, QueuePool) else 1)
        self._parking = Parking(PARKED)
        self._notifications = PreparedInsert(NOTIFICATIONS, engine.dialect)
        self._keys = PreparedInsert(
            IDEMPOTENCY_KEYS, engine.dialect, shared=("scope", "response", "created_at")
        )
        self._events = PreparedInsert(EVENTS, engine.dialect)
        self._deliveries = PreparedInsert(EVENT_DELIVERIES, engine.dialect, skip=("seq",))
        self._statements = {
            (rows, keys, announce, with_events): self._statement(rows, keys, announce, with_events)
            for rows in (0, 1, MANY)
            for keys in (0, 1, MANY)
            for announce in (False, True)
            for with_events in (False, True)
            if (rows or keys) and (rows or not with_events)
        }
        self._group: GroupSaver[_Added] = GroupSaver(
            self._add_together, _itself, what="accepts", expected=(DuplicateKey,)
        )

    async def add_many(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        keys: Sequence[Row] = (),
        announce: bool = False,
        events: OutboxRows | None = None,
    ) -> None:
        """Store ``rows`` of ``notifications``, the idempotency ``keys`` of their requests (one
        for a POST or a batch, one per row for stream entries) and the outbox's rows of their
        ``events``, all or nothing; with ``announce``, listening workers hear of them once they
        are stored (and listening event dispatchers of the events).

        ``DuplicateKey`` if another request holds one of the keys already: nothing is stored.
        """
        if not rows and not keys:
            return
        try:
            if self.postgresql:
                await self._add_in_one_statement(rows, keys, announce, events)
            else:
                await self._group.save(_Added(rows, keys, events))
        except IntegrityError as exc:
            if keys and duplicate_key(exc):
                raise DuplicateKey() from exc
            raise

    async def _add_in_one_statement(
        self,
        rows: Sequence[Mapping[str, Any]],
        keys: Sequence[Row],
        announce: bool,
        events: OutboxRows | None,
    ) -> None:
        args: list[Any]
        if len(rows) == 1:
            args = self._notifications.args(rows[0])
        elif rows:
            args = self._notifications.args_many(rows)
        else:
            args = []
        if len(keys) == 1:
            args += self._keys.args(keys[0])
        elif keys:
            args += self._keys.args_many(keys)
        if events:
            args += self._events.args_many(events.event_rows)
            args += self._deliveries.args_many(events.deliveries)
        sql = self._statements[min(len(rows), MANY), min(len(keys), MANY), announce, bool(events)]
        async with self._turns, driver_connection(self.engine, sql, self._parking) as conn:
            await conn.execute(sql, *args)

    async def close(self) -> None:
        """Give the connections it keeps between accepts back to the pool."""
        await self._parking.close()

    async def _add_together(self, added: Sequence[_Added]) -> Collection[Hashable]:
        """SQLite: the rows of every call in ``added`` in one transaction."""
        writes = [
            (insert.sql(), [insert.args(row) for row in rows])
            for insert, rows in (
                (self._notifications, [row for one in added for row in one.rows]),
                (self._keys, [key for one in added for key in one.keys]),
                (self._events, [r for one in added if one.events for r in one.events.event_rows]),
                (
                    self._deliveries,
                    [r for one in added if one.events for r in one.events.deliveries],
                ),
            )
            if rows
        ]

        def write(connection: sqlite3.Connection) -> None:
            for sql, args in writes:
                connection.executemany(sql, args)

        try:
            await in_sqlite_transaction(self.engine, writes[0][0] if writes else "", write)
        except IntegrityError as exc:
            if duplicate_key(exc):
                raise DuplicateKey() from exc
            raise
        return added

    def _statement(self, rows: int, keys: int, announce: bool, with_events: bool) -> str:
        """The CTE for no rows (a batch whose every item was refused, with its key), one, or
        ``MANY``, and as many keys; every form takes one argument a column, so the keys' come
        after as many, and the events' (an array a column, whatever their number) after
        those."""
        parts = []
        first = 1
        if rows:
            insert_rows = (
                self._notifications.sql(1) if rows == 1 else self._notifications.sql_many(1)
            )
            parts.append(f"n AS ({insert_rows})")
            first += len(self._notifications.columns)
        if keys:
            insert_keys = self._keys.sql(first) if keys == 1 else self._keys.sql_many(first)
            parts.append(f"k AS ({insert_keys})")
            first += len(self._keys.columns)
        if with_events:
            parts.append(f"e AS ({self._events.sql_many(first)})")
            first += len(self._events.columns)
            parts.append(f"d AS ({self._deliveries.sql_many(first)})")
        channels = ([DUE_CHANNEL] if announce else []) + ([EVENTS_CHANNEL] if with_events else [])
        notify = ", ".join(f"pg_notify('{channel}', '')" for channel in channels)
        return f"WITH {', '.join(parts)} SELECT {notify or 1}"


def _itself(added: _Added) -> Hashable:
    return added


def duplicate_key(exc: IntegrityError) -> bool:
    """Whether ``exc`` is the ``idempotency_keys`` primary key refusing a second row.

    Any other constraint (a notification's, a foreign key) is a bug to report as it is, not a
    request that lost a race.
    """
    error = exc.orig
    if getattr(error, "sqlstate", None) == UNIQUE_VIOLATION:  # asyncpg names the table
        return getattr(error, "table_name", None) == IDEMPOTENCY_KEYS.name
    # sqlite3: "UNIQUE constraint failed: idempotency_keys.scope, idempotency_keys.key"
    return getattr(
        error, "sqlite_errorcode", None
    ) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY and f" {IDEMPOTENCY_KEYS.name}." in str(error)

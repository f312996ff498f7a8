"""The plain-SQL plumbing of Herald's hot paths, shared by the accept and the worker's store.

The tables as SQLAlchemy Core sees them, ``INSERT`` statements and driver-level values built from
their definitions (through the same bind processors the ORM applies, so rows read back
identically), and the pooled driver connection those statements run on.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from operator import itemgetter
from typing import Any, TypeVar, cast

import asyncpg
from sqlalchemy import ColumnElement, Select, Table, insert, literal_column, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.util import greenlet_spawn

from app.domain import Event
from app.store.db import unavailable_reason
from app.store.models import (
    Attempt,
    DedupWindow,
    EventDelivery,
    EventRecord,
    IdempotencyKey,
    Notification,
    ReceiptRecord,
)

DUE_CHANNEL = "herald_due"
EVENTS_CHANNEL = "herald_events"
"""Sent in the transaction that writes event deliveries: event dispatchers claim them."""
FINAL_CHANNEL = "herald_final"
"""Its payload: the ids of notifications just written in a final state, comma-separated."""
NOTIFY_PAYLOAD_LIMIT = 7999
"""Bytes a ``NOTIFY`` payload may hold (PostgreSQL's limit, less one)."""

NOTIFICATIONS = cast(Table, Notification.__table__)
IDEMPOTENCY_KEYS = cast(Table, IdempotencyKey.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
EVENTS = cast(Table, EventRecord.__table__)
EVENT_DELIVERIES = cast(Table, EventDelivery.__table__)
RECEIPTS = cast(Table, ReceiptRecord.__table__)
DEDUP_WINDOWS = cast(Table, DedupWindow.__table__)

T = TypeVar("T")

Row = dict[str, Any]
"""A table row as column name → Python value (``metadata``, not the model's ``metadata_``)."""


def status_is(column: ColumnElement[str], *statuses: StrEnum) -> ColumnElement[bool]:
    """``status = 'pending'`` (or ``status IN ('pending', 'delivering')`` for several), the
    values written into the SQL rather than bound: a partial index on some statuses
    (``ix_notifications_due``, ``ix_event_deliveries_open``…) serves only a query whose own text
    implies its predicate, so bound values would keep PostgreSQL's generic plan of a prepared
    statement, and SQLite's planner, from using it."""
    values: list[ColumnElement[str]] = [literal_column(f"'{status}'") for status in statuses]
    return column == values[0] if len(values) == 1 else column.in_(values)


@dataclass(frozen=True, slots=True)
class OutboxRows:
    """Events to write with the change that causes them (``app.events.outbox``): the events
    some subscription or callback takes, their ``events`` rows and their ``event_deliveries``
    rows (``seq`` left to the database), in the order they happened."""

    events: Sequence[Event] = ()
    event_rows: Sequence[Row] = ()
    deliveries: Sequence[Row] = ()

    def __bool__(self) -> bool:
        return bool(self.events)


class Parking:
    """Pooled connections a hot path keeps checked out between its statements.

    A checkout from SQLAlchemy's pool and the checkin after it each run in a greenlet of their
    own (a fresh frame stack: an ``mmap`` and ``munmap`` each), a large share of an accept's
    CPU (bench/results/levers.md, "parked connections"). A connection
    whose statement went well, with no transaction open, waits here for the next statement
    instead, up to ``keep`` of them, the newest taken first. Each still goes back to the pool
    (a proper checkin, where the pool's reset and recycling apply) once it has been out of it
    for ``LEASE`` seconds, all of them once a connection is found lost (after a server
    restart the others are most likely lost too), and at ``close``, which their owner calls
    before the engine is disposed. At most ``keep`` stay out of the pool while the hot path is
    idle.
    """

    LEASE = 1.0

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[tuple[Any, float]] = []

    def take(self) -> tuple[Any, float] | None:
        """A parked connection and when it left the pool, or ``None``."""
        return self._idle.pop() if self._idle else None

    def park(self, pooled: Any, since: float) -> bool:
        """Keep ``pooled`` (out of the pool since ``since``) for the next statement, if there
        is room and its lease is not over."""
        if len(self._idle) >= self.keep or time.monotonic() - since > self.LEASE:
            return False
        self._idle.append((pooled, since))
        return True

    async def close(self, *, lost: bool = False) -> None:
        """Give every parked connection back to the pool (``lost``: invalidated first)."""
        while self._idle:
            pooled, _ = self._idle.pop()
            if lost:
                await greenlet_spawn(pooled.invalidate)
            await greenlet_spawn(pooled.close)


@asynccontextmanager
async def driver_connection(
    engine: AsyncEngine, sql: str, parking: Parking | None = None
) -> AsyncIterator[Any]:
    """A pooled connection's driver (asyncpg) connection, for plain SQL on a hot path; with
    ``parking``, one parked there if any, and parked there afterwards if it may.

    Driver and socket errors come out wrapped as SQLAlchemy wraps them (``IntegrityError`` for a
    constraint, ``DBAPIError`` otherwise, ``sql`` as the statement), so callers see one kind;
    a connection lost on the way, or left by a cancelled task, is invalidated, so the pool does
    not hand it out again.
    """
    taken = parking.take() if parking is not None else None
    if taken is None:
        pooled, since = await _raw_connection(engine), time.monotonic()
    else:
        pooled, since = taken
    driver: Any = pooled.driver_connection
    parked = False
    try:
        yield driver
        parked = (
            parking is not None and not driver.is_in_transaction() and parking.park(pooled, since)
        )
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
    ) as exc:
        # A closed connection ("connection is closed" after a server restart) is lost whatever
        # the error, as in SQLAlchemy's own check; so is one whose protocol state is broken
        # (InternalClientError, seen on BEGIN right after the server went down).
        lost = (
            driver.is_closed()
            or isinstance(exc, asyncpg.InternalClientError)
            or unavailable_reason(exc) is not None
        )
        if lost:
            await greenlet_spawn(pooled.invalidate)
            if parking is not None:
                await parking.close(lost=True)
        constraint = str(getattr(exc, "sqlstate", "")).startswith("23")
        wrapper = IntegrityError if constraint else DBAPIError
        raise wrapper(sql, None, exc, hide_parameters=True, connection_invalidated=lost) from exc
    except BaseException:
        # Anything else (a cancelled task, a bug of ours) mid-statement or mid-transaction:
        # what state the connection is in is unknown.
        await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        if not parked:
            await greenlet_spawn(pooled.close)


class SqliteCalls:
    """The pooled SQLite connection, driven a whole step at a time: ``call(work)`` runs
    ``work`` (plain ``sqlite3`` calls on values already processed) in the connection's thread
    in one go. SQLAlchemy's adapter takes four or five calls to that thread per statement
    (cursor, execute, fetch, close), each waiting for the event loop's next turn while the
    process's one connection is held.

    Driver errors come out as SQLAlchemy wraps them (``IntegrityError`` for a constraint,
    ``OperationalError`` for a locked or failing database), ``sql`` as the statement.
    """

    def __init__(self, pooled: Any, dialect: Dialect) -> None:
        self.pooled = pooled
        self.dialect = dialect
        self.driver: Any = pooled.driver_connection  # aiosqlite.Connection

    async def call(self, work: Callable[[sqlite3.Connection], T], sql: str) -> T:
        try:
            result: T = await self.driver._execute(_on_connection, self.driver, work)
            return result
        except sqlite3.Error as exc:
            raise DBAPIError.instance(
                sql, None, exc, sqlite3.Error, hide_parameters=True, dialect=self.dialect
            ) from exc


def _on_connection(driver: Any, work: Callable[[sqlite3.Connection], T]) -> T:
    """In aiosqlite's thread: ``work`` on its ``sqlite3`` connection."""
    return work(driver._conn)


@asynccontextmanager
async def sqlite_connection(engine: AsyncEngine) -> AsyncIterator[SqliteCalls]:
    """The pooled SQLite connection for ``SqliteCalls``; a transaction left open by an error
    is rolled back, and a connection left by a cancelled task (perhaps mid-call) is
    invalidated, as ``driver_connection`` does."""
    pooled = await _raw_connection(engine)
    calls = SqliteCalls(pooled, engine.dialect)
    try:
        yield calls
    except Exception:
        await calls.call(_roll_back, "ROLLBACK")
        raise
    except BaseException:
        await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        await greenlet_spawn(pooled.close)


def _roll_back(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def in_transaction(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (in the connection's thread), rolled
    back if it fails."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise
    return result


async def in_sqlite_transaction(
    engine: AsyncEngine, sql: str, work: Callable[[sqlite3.Connection], T]
) -> T:
    """``work`` in a transaction of its own on the pooled SQLite connection: one call to its
    thread (``SqliteCalls``); ``sql`` names the work in errors."""
    async with sqlite_connection(engine) as calls:
        return await calls.call(partial(in_transaction, work=work), sql)


async def _raw_connection(engine: AsyncEngine) -> Any:
    """A pooled connection; a refused connect (no such database, wrong password, server
    starting up) comes out as ``DBAPIError``, as ``engine.connect()`` raises it, not as the
    driver adapter's bare error, which no handler would recognise."""
    dialect = engine.dialect
    try:
        return await engine.raw_connection()
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            None,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=True,
            dialect=dialect,
        ) from exc


def bind_processors(table: Table, dialect: Dialect) -> dict[str, Any]:
    """Column name → SQLAlchemy's bind processor for it (``None``: the value goes as it is)."""
    return {
        column.name: column.type.dialect_impl(dialect).bind_processor(dialect)
        for column in table.columns
    }


def _tuple_of(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A row's values of ``names``, as a tuple whatever their number."""
    if len(names) == 1:
        name = names[0]
        return lambda row: (row[name],)
    return itemgetter(*names) if names else lambda row: ()


class PreparedInsert:
    """``INSERT INTO table (…)`` of one row (``VALUES ($n, …)``, or ``VALUES (?, …)`` for
    SQLite's driver) or of many (``unnest`` of an array per column, PostgreSQL: one statement
    text whatever the number of rows), and the driver-level values for them. Every column is
    given, but those the database fills (``skip``: a serial key). A ``shared`` column, one value
    for every row of a call (a stream batch's keys: their scope, time and empty answer), goes
    once beside the arrays (bench/results/levers.md, "ingest_stream")."""

    def __init__(
        self,
        table: Table,
        dialect: Dialect,
        *,
        skip: Sequence[str] = (),
        shared: Sequence[str] = (),
    ) -> None:
        self.table = table
        self.dialect = dialect
        self._given = [column for column in table.columns if column.name not in skip]
        self.columns = [column.name for column in self._given]
        processors = bind_processors(table, dialect)
        self.processors = [processors[name] for name in self.columns]
        self._values = itemgetter(*self.columns)
        self._processed = [
            (index, process) for index, process in enumerate(self.processors) if process
        ]
        self._shared = [index for index, name in enumerate(self.columns) if name in shared]
        self._varying = [index for index, name in enumerate(self.columns) if name not in shared]
        self._shared_values = _tuple_of([self.columns[index] for index in self._shared])
        self._varying_values = _tuple_of([self.columns[index] for index in self._varying])
        self._varying_processed = [
            (position, self.processors[index])
            for position, index in enumerate(self._varying)
            if self.processors[index]
        ]

    def sql(self, first: int = 1) -> str:
        """The one-row statement, its values from ``$first`` on (``?`` each, on SQLite)."""
        if self.dialect.paramstyle == "qmark":
            places = ", ".join("?" for _ in self.columns)
        else:
            places = ", ".join(f"${first + i}" for i in range(len(self.columns)))
        return f"INSERT INTO {self.table.name} ({', '.join(self.columns)}) VALUES ({places})"

    def sql_many(self, first: int) -> str:
        """The statement for ``args_many``: ``$first`` onwards are one value per shared column,
        then one array per other column."""
        order = self._shared + self._varying
        places = {
            index: f"${first + n}::{self._given[index].type.compile(self.dialect)}"
            for n, index in enumerate(order)
        }
        names = ", ".join(self.columns[index] for index in order)
        arrays = ", ".join(f"{places[index]}[]" for index in self._varying)
        if not self._shared:
            return f"INSERT INTO {self.table.name} ({names}) SELECT * FROM unnest({arrays})"
        once = ", ".join(places[index] for index in self._shared)
        return f"INSERT INTO {self.table.name} ({names}) SELECT {once}, * FROM unnest({arrays})"

    def args(self, row: Mapping[str, Any]) -> list[Any]:
        """The row's values in ``columns``' order, each through its bind processor if any."""
        values = list(self._values(row)) if len(self.columns) > 1 else [self._values(row)]
        for index, process in self._processed:
            values[index] = process(values[index])
        return values

    def args_many(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """``args`` of each row, as one list per column, in ``sql_many``'s order: a shared
        column's value once (``ValueError`` if a row holds another)."""
        if not self._shared:
            return [list(column) for column in zip(*(self.args(row) for row in rows), strict=True)]
        head = self._shared_values(rows[0])
        if not all(map(head.__eq__, map(self._shared_values, rows))):
            names = ", ".join(self.columns[index] for index in self._shared)
            raise ValueError(f"the rows of one {self.table.name} insert differ in {names}")
        first = self.args(rows[0])
        columns = [list(column) for column in zip(*map(self._varying_values, rows), strict=True)]
        for position, process in self._varying_processed:
            columns[position] = list(map(process, columns[position]))
        return [first[index] for index in self._shared] + columns


async def notify_due(executor: AsyncConnection | AsyncSession, dialect: Dialect) -> None:
    """``NOTIFY herald_due`` in ``executor``'s transaction (PostgreSQL; nothing on SQLite)."""
    await _notify(executor, dialect, DUE_CHANNEL)


async def notify_events(executor: AsyncConnection | AsyncSession, dialect: Dialect) -> None:
    """``NOTIFY herald_events`` in ``executor``'s transaction (PostgreSQL; nothing on SQLite)."""
    await _notify(executor, dialect, EVENTS_CHANNEL)


async def write_events(executor: AsyncConnection | AsyncSession, rows: OutboxRows | None) -> None:
    """Write an outbox's ``rows`` in ``executor``'s transaction (a session or a Core
    connection), with the ``NOTIFY`` that wakes the event dispatchers on commit."""
    if rows:
        await executor.execute(insert(EVENTS), list(rows.event_rows))
        await executor.execute(insert(EVENT_DELIVERIES), list(rows.deliveries))
        dialect = (
            executor.dialect
            if isinstance(executor, AsyncConnection)
            else executor.get_bind().dialect
        )
        await notify_events(executor, dialect)


async def _notify(executor: AsyncConnection | AsyncSession, dialect: Dialect, channel: str) -> None:
    if dialect.name == "postgresql":
        await executor.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


NOTIFY_FINAL = "SELECT pg_notify($1, $2)"


async def notify_final(engine: AsyncEngine, payload: str) -> None:
    """``NOTIFY herald_final`` with ``payload`` (PostgreSQL), outside any transaction."""
    async with driver_connection(engine, NOTIFY_FINAL) as driver:
        await driver.execute(NOTIFY_FINAL, FINAL_CHANNEL, payload)


def newest_first(
    stmt: Select[Any],
    id_column: ColumnElement[uuid.UUID] | InstrumentedAttribute[uuid.UUID],
    *,
    limit: int,
    before_id: uuid.UUID | None,
) -> Select[Any]:
    """A page of ``stmt`` for the list endpoints: newest first by id (UUIDv7 ids are
    time-ordered), the ``limit`` after the cursor ``before_id``."""
    stmt = stmt.order_by(id_column.desc()).limit(limit)
    return stmt if before_id is None else stmt.where(id_column < before_id)

"""The async engine for SQLite or PostgreSQL, with each backend's connection settings."""

from __future__ import annotations

import json
import socket
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from app.nesting import OMITTED

POSTGRES_DRIVER = "postgresql+asyncpg"
SQLITE_DRIVER = "sqlite+aiosqlite"
_DRIVERS = {
    "postgresql": POSTGRES_DRIVER,
    "postgres": POSTGRES_DRIVER,
    POSTGRES_DRIVER: POSTGRES_DRIVER,
    "sqlite": SQLITE_DRIVER,
    SQLITE_DRIVER: SQLITE_DRIVER,
}
URL_FORMS = "postgresql://USER:PASSWORD@HOST:5432/DATABASE (asyncpg) or sqlite:///PATH/herald.db"


def normalize_database_url(url: str) -> str:
    """``url`` with the driver Herald uses for its database: asyncpg or aiosqlite.

    ``postgresql://`` and ``postgres://`` (as most tools and hosting providers write them) mean
    asyncpg, ``sqlite://`` means aiosqlite. Any other scheme or driver (``mysql://``,
    ``postgresql+psycopg2://``) raises ``ValueError`` saying what to write instead; the message
    never repeats the URL, which may hold a password.
    """
    scheme, separator, rest = url.strip().partition("://")
    if not separator:
        raise ValueError(f"not a database URL; write {URL_FORMS}")
    driver = _DRIVERS.get(scheme.lower())
    if driver is None:
        backend, _, dbapi = scheme.partition("+")
        what = (
            f"driver {dbapi!r} is not supported (Herald uses asyncpg and aiosqlite)"
            if dbapi and backend.lower() in _DRIVERS
            else f"unsupported database {scheme!r} (Herald runs on PostgreSQL or SQLite)"
        )
        raise ValueError(f"{what}; write {URL_FORMS}")
    return f"{driver}://{rest}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def dumps_json(value: Any) -> str:
    """The engine's JSON serializer: orjson, far cheaper than ``json.dumps`` on the columns
    every accept and every round writes (bench/results/levers.md, "orjson alone"); ``json`` for
    what orjson refuses (integers past 64 bits, which a request's metadata may hold)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def loads_json(text: str) -> Any:
    """The engine's JSON deserializer: ``json.loads``, except that a value nested too deeply for
    it (only a row stored before the nesting limit can hold one) reads as ``OMITTED``, so one
    such row cannot fail a list or the delivery loop's claim."""
    try:
        return json.loads(text)
    except RecursionError:
        return dict(OMITTED)


class HintingSqliteCompiler(SQLiteCompiler):
    """SQLite's statement compiler, writing a table's hint for SQLite
    (``with_hint(table, "INDEXED BY …", "sqlite")``) after the table's name, where SQLite takes
    it; SQLAlchemy's own compiler leaves SQLite's hints out."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


def create_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """An engine for ``url``.

    SQLite gets one connection per process (its writers serialise anyway, and one connection
    cannot deadlock against itself), WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so that a
    second process (``herald worker`` beside ``herald serve --no-worker``) waits for the write
    lock instead of failing on a stale snapshot. A connection returned to the pool is rolled
    back only when a transaction is open on it: the pool's unconditional rollback was one more
    call to aiosqlite's thread for every transaction run on the driver connection
    (``SqliteCalls``), each waiting for the event loop's next turn while the one connection is
    held (bench/results/levers.md, "SQLite"). Its statements are compiled by
    ``HintingSqliteCompiler``.
    """
    if is_sqlite(url):
        engine = create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            pool_reset_on_return=None,
            json_serializer=dumps_json,
            json_deserializer=loads_json,
        )

        engine.sync_engine.dialect.statement_compiler = HintingSqliteCompiler

        @event.listens_for(engine.sync_engine, "reset")
        def _sqlite_reset(dbapi_connection: Any, _record: Any, state: Any) -> None:
            # in_transaction reads a flag of the sqlite3 connection, without a call to its
            # thread (nothing else uses the connection while it is being returned)
            if state.asyncio_safe and dbapi_connection.driver_connection.in_transaction:
                dbapi_connection.rollback()

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Up to pool_size connections, opened as needed and then kept. No overflow: SQLAlchemy
    # closes an overflow connection when it is returned, so under load connections were opened
    # and closed all the time (bench/results/levers.md, "no pool overflow").
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        json_serializer=dumps_json,
        json_deserializer=loads_json,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


UNREACHABLE = "the database is unreachable; try again shortly"
_MISSING_TABLE = ("does not exist", "no such table")
_UNAVAILABLE_SQLSTATES = ("08", "28", "3D000", "53", "57P01", "57P02", "57P03")
"""PostgreSQL states that mean "not now" rather than "wrong query": connection exceptions
(class 08), a refused login (class 28: 28000 no such role, 28P01 wrong password), a database
that does not exist (3D000), insufficient resources (class 53: 53300 too many connections, a
full disk), the server shutting down, crashed or starting up (57P01-57P03: asyncpg raises
``CannotConnectNowError`` while a restart is under way). SQLAlchemy wraps most of them in a bare
``DBAPIError``. An operator fixes a wrong database name or password while Herald keeps
answering 503 and retrying, as in any other outage."""


def unavailable_reason(exc: BaseException) -> str | None:
    """Why the database cannot serve us now, or ``None`` when ``exc`` is a bug of ours."""
    states = _sqlstates(exc)
    if any(state.startswith(_UNAVAILABLE_SQLSTATES) for state in states):
        return UNREACHABLE  # before the message test: 'database "x" does not exist' is not a table
    if "42P01" in states or (  # undefined_table: PostgreSQL, raw or through SQLAlchemy
        isinstance(exc, ProgrammingError | OperationalError)
        and any(m in str(exc) for m in _MISSING_TABLE)
    ):
        return "the database is not migrated; run herald migrate"
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return UNREACHABLE
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return UNREACHABLE
    return None


def brief(exc: BaseException) -> str:
    """The first line of the driver's message (SQLAlchemy's wrapper adds a prefix and SQL)."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()
    return text[0][:200] if text else type(exc).__name__


def _sqlstates(exc: BaseException) -> list[str]:
    """The SQLSTATE codes along ``exc``'s causes (driver errors wrapped by SQLAlchemy)."""
    states: list[str] = []
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            states.append(state)
        if isinstance(current, BaseException):
            pending += [getattr(current, "orig", None), current.__cause__]
    return states

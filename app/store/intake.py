"""How newly accepted notifications are stored: the API's hot path, so no ORM unit of work.

One implementation for a single POST and a batch alike: ``Intake.add_many`` stores the rows,
the idempotency key of their request and the wake-up for listening workers atomically, and a
taken key comes out as ``DuplicateKey`` whichever the number of rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.sql import (
    DUE_CHANNEL,
    IDEMPOTENCY_KEYS,
    NOTIFICATIONS,
    PreparedInsert,
    Row,
    driver_connection,
)

MAX_ARGUMENTS = 32767
"""The most bind arguments asyncpg sends with one statement."""

UNIQUE_VIOLATION = "23505"
"""PostgreSQL's SQLSTATE for a duplicate key."""


class DuplicateKey(Exception):
    """The idempotency key is already taken: another request stored it first."""


class Intake:
    """Stores newly accepted notifications with the idempotency key of their request.

    On PostgreSQL every call is one statement in autocommit on the pooled driver connection:
    the rows, the key and the ``NOTIFY`` to listening workers in one CTE (a ``VALUES`` list of
    as many rows as given), so one round trip and no ``BEGIN``/``COMMIT``, a fraction of the
    ORM's CPU (bench/results/levers.md, "`Intake`: one CTE statement"). Values pass through
    the same SQLAlchemy bind processors the ORM applies, so rows read back identically. On
    SQLite (no ``LISTEN``: the service wakes its in-process worker) Core INSERTs in one
    transaction.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._notifications = PreparedInsert(NOTIFICATIONS, engine.dialect)
        self._keys = PreparedInsert(IDEMPOTENCY_KEYS, engine.dialect)
        self.max_rows = (MAX_ARGUMENTS - len(self._keys.columns)) // len(
            self._notifications.columns
        )
        """The most rows one call stores (one statement's arguments on PostgreSQL)."""
        self._statement = lru_cache(maxsize=8)(self._build_statement)

    async def add_many(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        key: Row | None = None,
        announce: bool = False,
    ) -> None:
        """Store ``rows`` of ``notifications`` and the idempotency ``key`` of their request, all
        or nothing; with ``announce``, listening workers hear of them once they are stored.

        ``DuplicateKey`` if another request holds the key already: nothing is stored.
        """
        if not rows and key is None:
            return
        if len(rows) > self.max_rows:
            raise ValueError(f"{len(rows)} rows are more than one call stores ({self.max_rows})")
        try:
            if self.postgresql:
                await self._add_in_one_statement(rows, key, announce)
            else:
                async with self.engine.begin() as conn:
                    if rows:
                        await conn.execute(insert(NOTIFICATIONS), list(rows))
                    if key is not None:
                        await conn.execute(insert(IDEMPOTENCY_KEYS), [key])
        except IntegrityError as exc:
            if key is not None and _duplicate_key(exc):
                raise DuplicateKey() from exc
            raise

    async def _add_in_one_statement(
        self, rows: Sequence[Mapping[str, Any]], key: Row | None, announce: bool
    ) -> None:
        args: list[Any] = []
        for row in rows:
            args += self._notifications.args(row)
        if key is not None:
            args += self._keys.args(key)
        sql = self._statement(len(rows), key is not None, announce)
        async with driver_connection(self.engine, sql) as conn:
            await conn.execute(sql, *args)

    def _build_statement(self, rows: int, with_key: bool, announce: bool) -> str:
        parts = []
        if rows:
            parts.append(f"n AS ({self._notifications.sql(1, rows=rows)})")
        if with_key:
            first = rows * len(self._notifications.columns) + 1
            parts.append(f"k AS ({self._keys.sql(first)})")
        main = f"SELECT pg_notify('{DUE_CHANNEL}', '')" if announce else "SELECT 1"
        return f"WITH {', '.join(parts)} {main}"


def _duplicate_key(exc: IntegrityError) -> bool:
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

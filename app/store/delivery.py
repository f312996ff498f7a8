"""The delivery loop's claim and save, in plain SQL on PostgreSQL.

Both run for every notification delivered, so on PostgreSQL they skip SQLAlchemy as the
accept step does (``Intake``): the same statements, written out once, on the pooled driver
connection. A claim is one statement in autocommit instead of ``BEGIN``, the ``UPDATE`` and
``COMMIT``; a save is the same transaction as through SQLAlchemy (lock the rows still ours in id
order, one executemany ``UPDATE`` per set of changed columns, one executemany ``INSERT`` of the
attempts) without its per-statement compile-cache lookups, parameter processing and result
objects (bench/results/levers.md, "`DeliveryStore`"). Values go through the same
SQLAlchemy bind processors, so rows read back identically. SQLite takes
``NotificationRepository``'s statements in a session.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store.repositories import (
    CLAIMED_COLUMNS,
    Claimed,
    FinishedRound,
    NotificationRepository,
    group_by_columns,
)
from app.store.sql import (
    ATTEMPTS,
    NOTIFICATIONS,
    PreparedInsert,
    bind_processors,
    driver_connection,
)

_HELD = "status = 'delivering' AND claimed_by = $2"
"""Held by this worker under its lease (``_held``); every statement using it passes the worker
id as ``$2``."""

CLAIM = f"""
UPDATE notifications SET status = 'delivering', claimed_by = $1, lease_expires_at = $2,
       updated_at = $3
 WHERE id IN (SELECT id FROM notifications
               WHERE status = 'pending' AND next_attempt_at <= $3
               ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING {", ".join(CLAIMED_COLUMNS)}
"""

LOCK_HELD = (
    f"SELECT id FROM notifications WHERE id = ANY($1::uuid[]) AND {_HELD} ORDER BY id FOR UPDATE"
)
"""The rows of ``$1`` this worker still holds, locked in id order (see ``_in_lock_order``)."""


class DeliveryStore:
    """Claims due notifications and saves finished rounds for one worker process."""

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.engine = engine
        self.sessions = sessions
        self.postgresql = engine.dialect.name == "postgresql"
        self._attempts = PreparedInsert(ATTEMPTS, engine.dialect)
        self._attempts_sql = self._attempts.sql(1)
        self._processors = bind_processors(NOTIFICATIONS, engine.dialect)
        self._updates: dict[tuple[str, ...], str] = {}

    async def claim(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Claimed]:
        """Mark up to ``limit`` due notifications ``delivering`` under this worker's lease."""
        if not self.postgresql:
            async with self.sessions() as session, session.begin():
                claimed = await NotificationRepository(session).claim_due(
                    worker_id=worker_id, now=now, lease_until=lease_until, limit=limit
                )
            return list(claimed)
        async with driver_connection(self.engine, CLAIM) as conn:
            records = await conn.fetch(CLAIM, worker_id, lease_until, now, limit)
        return [Claimed(*record) for record in records]

    async def save_rounds(
        self, rounds: Sequence[FinishedRound], *, worker_id: str
    ) -> set[uuid.UUID]:
        """Write finished rounds whose lease is still ours, in one transaction; the ids saved.

        As ``NotificationRepository.save_rounds``: a round whose lease was lost is skipped whole.
        """
        if not rounds:
            return set()
        if not self.postgresql:
            async with self.sessions() as session, session.begin():
                return await NotificationRepository(session).save_rounds(
                    rounds, worker_id=worker_id
                )
        ids = [finished.notification_id for finished in rounds]
        async with driver_connection(self.engine, LOCK_HELD) as conn, conn.transaction():
            ours: set[uuid.UUID] = {
                record[0] for record in await conn.fetch(LOCK_HELD, ids, worker_id)
            }
            if not ours:
                return ours
            kept = [finished for finished in rounds if finished.notification_id in ours]
            for columns, group in group_by_columns(kept).items():
                await conn.executemany(
                    self._update(columns),
                    [
                        [notification_id, worker_id, *self._args(columns, params)]
                        for notification_id, params in group
                    ],
                )
            attempts = [attempt for finished in kept for attempt in finished.attempts]
            if attempts:
                await conn.executemany(
                    self._attempts_sql, [self._attempts.args(attempt) for attempt in attempts]
                )
        return ours

    def _update(self, columns: tuple[str, ...]) -> str:
        sql = self._updates.get(columns)
        if sql is None:
            sets = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(columns))
            sql = self._updates[columns] = (
                f"UPDATE notifications SET {sets}, claimed_by = NULL, lease_expires_at = NULL"
                f" WHERE id = $1 AND {_HELD}"
            )
        return sql

    def _args(self, columns: tuple[str, ...], params: dict[str, object]) -> list[object]:
        processors = self._processors
        return [
            params[name] if processors[name] is None else processors[name](params[name])
            for name in columns
        ]

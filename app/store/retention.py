"""Retention's statements: delete one batch of finished notifications past their period (with
their attempts, events and the events' deliveries and attempts), remember the ids as ranges,
and give SQLite's freed pages back to the file system.

A batch is one short transaction. A notification with an event delivery still open (a
subscriber or callback not yet told) is left until it is settled, so no event is lost.
PostgreSQL locks the batch's rows ``SKIP LOCKED`` (an operator's retry of one of them waits for
nothing, and the delete rechecks nothing: the lock holds them); SQLite's ``BEGIN IMMEDIATE``
has one writer at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    delete,
    exists,
    insert,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from app.domain import OPEN_EVENT_DELIVERIES, NotificationStatus
from app.retention import CutoffGroup
from app.store.db import is_sqlite
from app.store.inbound import INBOUND_MESSAGES
from app.store.models import PurgedRange
from app.store.sql import ATTEMPTS, EVENT_DELIVERIES, EVENTS, NOTIFICATIONS, status_is

PURGED_RANGES = cast(Table, PurgedRange.__table__)
VACUUM_PAGES = 2000
"""Pages one ``PRAGMA incremental_vacuum`` step frees (8 MB of 4 KiB pages): a step holds the
write lock, so it is kept short like a batch."""

_N = NOTIFICATIONS.c


@dataclass(frozen=True, slots=True)
class Purged:
    """What one batch deleted: notifications by status."""

    by_status: dict[NotificationStatus, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def _routes_of(group: CutoffGroup) -> ColumnElement[bool]:
    if not group.others:
        return _N.route.in_(group.routes)
    if not group.routes:
        return true()
    return or_(_N.route.is_(None), _N.route.not_in(group.routes))


def _candidates(group: CutoffGroup, limit: int, postgres: bool) -> Any:
    """Up to ``limit`` of ``group``'s notifications, oldest change first, none with an event
    delivery still open."""
    open_delivery = exists().where(
        EVENT_DELIVERIES.c.notification_id == _N.id,
        status_is(EVENT_DELIVERIES.c.status, *OPEN_EVENT_DELIVERIES),
    )
    query = (
        select(_N.id, _N.owner)
        .where(
            status_is(_N.status, group.status),
            _N.updated_at < group.cutoff,
            _routes_of(group),
            ~open_delivery,
        )
        .order_by(_N.updated_at)
        .limit(limit)
    )
    return query.with_for_update(skip_locked=True, of=NOTIFICATIONS) if postgres else query


class RetentionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sqlite = is_sqlite(str(engine.url))

    async def purge_batch(self, group: CutoffGroup, limit: int, now: datetime) -> int:
        """Delete up to ``limit`` of ``group``'s notifications in one transaction; how many."""
        async with self.engine.begin() as connection:
            rows = (await connection.execute(_candidates(group, limit, not self.sqlite))).all()
            if not rows:
                return 0
            ids = [row[0] for row in rows]
            await _delete_of(connection, ids)
            ranges = _ranges(rows, now)
            await connection.execute(insert(PURGED_RANGES), ranges)
        return len(ids)

    async def purge_inbound(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the inbound messages received before ``before``, oldest
        first, in one transaction; how many."""
        table = INBOUND_MESSAGES
        oldest = (
            select(table.c.id)
            .where(table.c.received_at < before)
            .order_by(table.c.received_at)
            .limit(limit)
        )
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(table).where(table.c.id.in_(oldest)))
            return int(result.rowcount)

    async def forget_ranges(self, before: datetime) -> int:
        """Stop remembering ranges purged before ``before``; how many."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(PURGED_RANGES).where(PURGED_RANGES.c.purged_at < before)
            )
            return result.rowcount

    async def vacuum_step(self) -> int:
        """SQLite: free up to ``VACUUM_PAGES`` of the file's free pages; how many remain free
        (0 on PostgreSQL, whose autovacuum reuses the space)."""
        if not self.sqlite:
            return 0
        await self._pragma(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
        (left,) = (await self._pragma("PRAGMA freelist_count"))[0]
        return int(left)

    async def checkpoint(self) -> None:
        """SQLite: write the WAL back into the file and truncate both, so the space the vacuum
        freed leaves the disk."""
        if self.sqlite:
            await self._pragma("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _pragma(self, sql: str) -> list[Any]:
        """Run a pragma to its end outside any transaction (a checkpoint cannot run inside
        one, and the engine opens every transaction ``BEGIN IMMEDIATE``), on the driver's
        connection, which commits each statement by itself."""
        pooled = await self.engine.raw_connection()
        try:
            driver: Any = pooled.driver_connection
            cursor = await driver.execute(sql)
            rows: list[Any] = list(await cursor.fetchall())
            await cursor.close()
            return rows
        finally:
            await greenlet_spawn(pooled.close)


async def _delete_of(connection: AsyncConnection, ids: Sequence[uuid.UUID]) -> None:
    """Delete the notifications ``ids`` and what refers to them: their events (whose
    deliveries and attempts go by cascade), their attempts (and idempotency keys, by cascade)."""
    await connection.execute(delete(EVENTS).where(EVENTS.c.notification_id.in_(ids)))
    await connection.execute(delete(ATTEMPTS).where(ATTEMPTS.c.notification_id.in_(ids)))
    await connection.execute(delete(NOTIFICATIONS).where(_N.id.in_(ids)))


def _ranges(rows: Sequence[Any], now: datetime) -> list[dict[str, Any]]:
    """One range per owner of the batch's ids."""
    by_owner: dict[str | None, list[uuid.UUID]] = {}
    for notification_id, owner in rows:
        by_owner.setdefault(owner, []).append(notification_id)
    return [
        {
            "owner": owner,
            "first_id": min(ids),
            "last_id": max(ids),
            "count": len(ids),
            "purged_at": now,
        }
        for owner, ids in by_owner.items()
    ]


async def was_purged(
    connection: AsyncConnection, notification_id: uuid.UUID, owner: str | None
) -> bool:
    """Whether a missing ``notification_id`` lies in a range retention purged (of ``owner``'s
    notifications; ``None``: anybody's, as the admin scope sees them)."""
    query = select(PURGED_RANGES.c.id).where(
        PURGED_RANGES.c.first_id <= notification_id, PURGED_RANGES.c.last_id >= notification_id
    )
    if owner is not None:
        query = query.where(PURGED_RANGES.c.owner == owner)
    return (await connection.execute(query.limit(1))).first() is not None

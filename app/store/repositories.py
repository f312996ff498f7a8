"""Every query of the API and the service (the worker's are in queue.py). Functions here flush;
the caller's unit of work commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import false, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.domain import NotificationStatus
from app.store.models import Attempt, IdempotencyKey, Notification
from app.store.sql import (
    DUE_CHANNEL,
    IDEMPOTENCY_KEYS,
    NOTIFICATIONS,
    PreparedInsert,
    Row,
    driver_connection,
    notify_due,
)


class DuplicateKey(Exception):
    """The idempotency key is already taken: another request stored it first."""


class Intake:
    """Stores newly accepted notifications: the API's hot path, so no ORM unit of work.

    On PostgreSQL one notification is one statement in autocommit on the pooled driver
    connection: the row, its idempotency key and the ``NOTIFY`` to listening workers in one
    CTE, so one round trip and no ``BEGIN``/``COMMIT``, a fraction of the ORM's CPU
    (bench/results/levers.md, "`Intake`: one CTE statement"). Values pass through the same
    SQLAlchemy bind processors the ORM applies, so rows read back identically. SQLite and
    batches take Core INSERTs in one transaction.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._notifications = PreparedInsert(NOTIFICATIONS, engine.dialect)
        self._keys = PreparedInsert(IDEMPOTENCY_KEYS, engine.dialect)
        self._statements = {
            (with_key, announce): self._statement(with_key, announce)
            for with_key in (False, True)
            for announce in (False, True)
        }

    async def add(self, row: Row, *, key: Row | None = None, announce: bool = False) -> None:
        """Store one notification (and its idempotency key); ``DuplicateKey`` if that is taken."""
        if not self.postgresql:
            await self.add_many([row], key=key, announce=announce)
            return
        args = self._notifications.args(row)
        if key is not None:
            args += self._keys.args(key)
        sql = self._statements[key is not None, announce]
        try:
            async with driver_connection(self.engine, sql) as conn:
                await conn.execute(sql, *args)
        except IntegrityError as exc:
            if key is not None and getattr(exc.orig, "sqlstate", None) == "23505":
                raise DuplicateKey() from exc
            raise

    def _statement(self, with_key: bool, announce: bool) -> str:
        parts = [f"n AS ({self._notifications.sql(1)})"]
        if with_key:
            parts.append(f"k AS ({self._keys.sql(len(self._notifications.columns) + 1)})")
        main = f"SELECT pg_notify('{DUE_CHANNEL}', '')" if announce else "SELECT 1"
        return f"WITH {', '.join(parts)} {main}"

    async def add_many(
        self, rows: Sequence[Row], *, key: Row | None = None, announce: bool = False
    ) -> None:
        """Store notifications (and the idempotency key of their request) in one transaction;
        workers hear of them on commit. ``DuplicateKey`` if the key is taken: nothing is stored."""
        try:
            async with self.engine.begin() as conn:
                if rows:
                    await conn.execute(insert(NOTIFICATIONS), list(rows))
                if key is not None:
                    await conn.execute(insert(IDEMPOTENCY_KEYS), [key])
                if announce:
                    await notify_due(conn, conn.dialect)
        except IntegrityError as exc:
            if key is None:
                raise
            raise DuplicateKey() from exc


@dataclass(frozen=True, slots=True)
class ListFilter:
    status: str | None = None
    route: str | None = None
    channel: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    owner: str | None = None


class NotificationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(
        self, notification_id: uuid.UUID, *, owner: str | None = None
    ) -> Notification | None:
        stmt = select(Notification).where(Notification.id == notification_id)
        if owner is not None:
            stmt = stmt.where(Notification.owner == owner)
        return (await self.session.scalars(stmt)).one_or_none()

    async def list(
        self, filters: ListFilter, *, limit: int, before_id: uuid.UUID | None
    ) -> Sequence[Notification]:
        """Newest first by id (ids are time-ordered); ``before_id`` is the cursor."""
        stmt = select(Notification).order_by(Notification.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(Notification.id < before_id)
        if filters.status is not None:
            stmt = stmt.where(Notification.status == filters.status)
        if filters.route is not None:
            stmt = stmt.where(Notification.route == filters.route)
        if filters.channel is not None:
            if "," in filters.channel:
                # chain_key joins names with commas and no name holds one: "a,b" must not match
                # the neighbours a and b.
                stmt = stmt.where(false())
            pattern = "%," + _like_escape(filters.channel) + ",%"
            stmt = stmt.where(Notification.chain_key.like(pattern, escape="\\"))
        if filters.created_after is not None:
            stmt = stmt.where(Notification.created_at >= filters.created_after)
        if filters.created_before is not None:
            stmt = stmt.where(Notification.created_at < filters.created_before)
        if filters.owner is not None:
            stmt = stmt.where(Notification.owner == filters.owner)
        return (await self.session.scalars(stmt)).all()

    async def attempts(self, notification_id: uuid.UUID) -> Sequence[Attempt]:
        stmt = (
            select(Attempt)
            .where(Attempt.notification_id == notification_id)
            .order_by(Attempt.started_at, Attempt.id)
        )
        return (await self.session.scalars(stmt)).all()

    async def transition(
        self,
        notification_id: uuid.UUID,
        *,
        from_statuses: Sequence[str],
        values: dict[str, Any],
    ) -> Notification | None:
        """Change a notification only if its status is one of ``from_statuses``.

        One conditional UPDATE, so a worker claiming the row at the same moment cannot be
        overwritten: exactly one of the two wins.
        """
        stmt = (
            update(Notification)
            .where(Notification.id == notification_id, Notification.status.in_(from_statuses))
            .values(**values)
            .returning(Notification)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        row = (await self.session.scalars(stmt)).one_or_none()
        await self.session.flush()
        return row

    async def announce_due(self) -> None:
        """Tell listening workers (PostgreSQL ``NOTIFY``, sent on commit) that work is due."""
        await notify_due(self.session, self.session.get_bind().dialect)

    async def oldest_due(self) -> datetime | None:
        """The earliest ``next_attempt_at`` among pending notifications."""
        stmt = select(func.min(Notification.next_attempt_at)).where(
            Notification.status == NotificationStatus.PENDING
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def queue_depth(self) -> dict[str, int]:
        stmt = select(Notification.status, func.count()).group_by(Notification.status)
        return {status: count for status, count in (await self.session.execute(stmt)).all()}


class IdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, scope: str, key: str) -> IdempotencyKey | None:
        return await self.session.get(IdempotencyKey, (scope, key))


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


IDEMPOTENCY_RETENTION = timedelta(hours=24)

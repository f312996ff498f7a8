"""Every query of the API and the service (the worker's are in queue.py). Functions here flush;
the caller's unit of work commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import ListFilter, NotificationStatus, StoredAttempt, StoredNotification
from app.store.models import IdempotencyKey, Notification
from app.store.sql import ATTEMPTS, NOTIFICATIONS, newest_first, notify_due


class NotificationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(
        self, notification_id: uuid.UUID, *, owner: str | None = None
    ) -> StoredNotification | None:
        table = NOTIFICATIONS
        stmt = select(table).where(table.c.id == notification_id)
        if owner is not None:
            stmt = stmt.where(table.c.owner == owner)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return None if row is None else cast(StoredNotification, dict(row))

    async def list(
        self, filters: ListFilter, *, limit: int, before_id: uuid.UUID | None
    ) -> Sequence[StoredNotification]:
        """Newest first by id (ids are time-ordered); ``before_id`` is the cursor."""
        table = NOTIFICATIONS
        stmt = newest_first(select(table), table.c.id, limit=limit, before_id=before_id)
        rows = (await self.session.execute(filtered(stmt, filters))).mappings()
        return [cast(StoredNotification, dict(row)) for row in rows]

    async def count_by_status(self, filters: ListFilter, *, limit: int) -> dict[str, int]:
        """How many of the newest ``limit`` notifications that ``filters`` match (its own
        ``status`` aside) have each status: a bounded count, however large the table."""
        table = NOTIFICATIONS
        newest = filtered(
            select(table.c.status).order_by(table.c.id.desc()).limit(limit),
            replace(filters, status=None),
        ).subquery()
        stmt = select(newest.c.status, func.count()).group_by(newest.c.status)
        return {status: count for status, count in (await self.session.execute(stmt)).all()}

    async def attempts(self, notification_id: uuid.UUID) -> Sequence[StoredAttempt]:
        table = ATTEMPTS
        stmt = (
            select(table)
            .where(table.c.notification_id == notification_id)
            .order_by(table.c.started_at, table.c.id)
        )
        rows = (await self.session.execute(stmt)).mappings()
        return [cast(StoredAttempt, dict(row)) for row in rows]

    async def transition(
        self,
        notification_id: uuid.UUID,
        *,
        from_statuses: Sequence[str],
        values: dict[str, Any],
        unacknowledged: bool = False,
        unchanged_since: datetime | None = None,
    ) -> StoredNotification | None:
        """Change a notification only if its status is one of ``from_statuses`` (and, with
        ``unacknowledged``, nobody acknowledged it yet; with ``unchanged_since``, its
        ``updated_at`` is still that); ``values`` by column name.

        One conditional UPDATE, so a worker claiming the row at the same moment cannot be
        overwritten, nor two acknowledgements both win: exactly one of them wins.
        """
        table = NOTIFICATIONS
        stmt = (
            update(table)
            .where(table.c.id == notification_id, table.c.status.in_(from_statuses))
            .values(**values)
            .returning(*table.c)
        )
        if unacknowledged:
            stmt = stmt.where(table.c.acknowledged_at.is_(None))
        if unchanged_since is not None:
            stmt = stmt.where(table.c.updated_at == unchanged_since)
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return None if row is None else cast(StoredNotification, dict(row))

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

    async def get_many(self, scope: str, keys: Sequence[str]) -> Sequence[IdempotencyKey]:
        """The records of those of ``keys`` that were used in ``scope``."""
        if not keys:
            return []
        result = await self.session.scalars(
            select(IdempotencyKey).where(
                IdempotencyKey.scope == scope, IdempotencyKey.key.in_(list(keys))
            )
        )
        return result.all()


def filtered(stmt: Select[Any], filters: ListFilter) -> Select[Any]:
    """``stmt`` (over ``notifications``) narrowed to what ``filters`` match."""
    table = NOTIFICATIONS
    if filters.status is not None:
        stmt = stmt.where(table.c.status == filters.status)
    if filters.route is not None:
        stmt = stmt.where(table.c.route == filters.route)
    if filters.channel is not None:
        if "," in filters.channel:
            # chain_key joins names with commas and no name holds one: "a,b" must not match
            # the neighbours a and b.
            stmt = stmt.where(false())
        pattern = "%," + _like_escape(filters.channel) + ",%"
        stmt = stmt.where(table.c.chain_key.like(pattern, escape="\\"))
    if filters.created_after is not None:
        stmt = stmt.where(table.c.created_at >= filters.created_after)
    if filters.created_before is not None:
        stmt = stmt.where(table.c.created_at < filters.created_before)
    if filters.owner is not None:
        stmt = stmt.where(table.c.owner == filters.owner)
    if filters.severity is not None:
        stmt = stmt.where(table.c.severity == filters.severity)
    if filters.subject_contains:
        pattern = "%" + _like_escape(filters.subject_contains) + "%"
        stmt = stmt.where(table.c.subject.ilike(pattern, escape="\\"))
    return stmt


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


IDEMPOTENCY_RETENTION = timedelta(hours=24)

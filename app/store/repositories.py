"""Every query Herald makes. Functions here flush; the caller's unit of work commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, false, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.models import Attempt, IdempotencyKey, Notification

DUE_CHANNEL = "herald_due"


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

    async def add(self, notification: Notification) -> None:
        self.session.add(notification)
        await self.session.flush()

    async def add_all(self, notifications: Sequence[Notification]) -> None:
        self.session.add_all(notifications)
        await self.session.flush()

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

    # --- worker -------------------------------------------------------------------------

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[Notification]:
        """Mark up to ``limit`` due notifications ``delivering`` under this worker's lease.

        ``FOR UPDATE SKIP LOCKED`` on PostgreSQL lets many workers claim side by side without
        waiting on each other; SQLite ignores it and serialises writers (``BEGIN IMMEDIATE``).
        """
        due = (
            select(Notification.id)
            .where(Notification.status == "pending", Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(Notification)
            .where(Notification.id.in_(due.scalar_subquery()))
            .values(
                status="delivering",
                claimed_by=worker_id,
                lease_expires_at=lease_until,
                updated_at=now,
            )
            .returning(Notification)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.scalars(stmt)).all()

    async def save_round(
        self,
        notification_id: uuid.UUID,
        *,
        worker_id: str,
        attempts: Sequence[Attempt],
        values: dict[str, Any],
    ) -> bool:
        """Write a round's attempts and the notification's new state, if we still hold it.

        ``False`` when the lease was lost (another worker took the notification over): the
        caller rolls back, so the round is neither recorded nor counted twice.
        """
        stmt = (
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.status == "delivering",
                Notification.claimed_by == worker_id,
            )
            .values(**values, claimed_by=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(stmt)
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self.session.add_all(attempts)
        await self.session.flush()
        return True

    async def extend_leases(
        self, ids: Sequence[uuid.UUID], *, worker_id: str, lease_until: datetime
    ) -> int:
        """Move this worker's leases on ``ids`` to ``lease_until`` (rounds still running)."""
        if not ids:
            return 0
        stmt = (
            update(Notification)
            .where(
                Notification.id.in_(ids),
                Notification.status == "delivering",
                Notification.claimed_by == worker_id,
            )
            .values(lease_expires_at=lease_until)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(stmt)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, ids: Sequence[uuid.UUID], *, worker_id: str, now: datetime) -> int:
        """Give claimed notifications back untried (shutdown), without counting an attempt."""
        if not ids:
            return 0
        stmt = (
            update(Notification)
            .where(
                Notification.id.in_(ids),
                Notification.status == "delivering",
                Notification.claimed_by == worker_id,
            )
            .values(status="pending", claimed_by=None, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(stmt)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def recover_expired_leases(self, now: datetime) -> int:
        """Return notifications whose worker died mid-delivery to ``pending``, due at once."""
        stmt = (
            update(Notification)
            .where(Notification.status == "delivering", Notification.lease_expires_at < now)
            .values(
                status="pending",
                claimed_by=None,
                lease_expires_at=None,
                next_attempt_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(stmt)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def announce_due(self) -> None:
        """Tell listening workers (PostgreSQL ``NOTIFY``, sent on commit) that work is due."""
        if self.session.get_bind().dialect.name == "postgresql":
            await self.session.execute(
                text("SELECT pg_notify(:channel, '')"), {"channel": DUE_CHANNEL}
            )

    async def oldest_due(self) -> datetime | None:
        """The earliest ``next_attempt_at`` among pending notifications."""
        stmt = select(func.min(Notification.next_attempt_at)).where(
            Notification.status == "pending"
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

    async def add(self, record: IdempotencyKey) -> None:
        self.session.add(record)
        await self.session.flush()

    async def purge_older_than(self, cutoff: datetime) -> int:
        result = await self.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


IDEMPOTENCY_RETENTION = timedelta(hours=24)

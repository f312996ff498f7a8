"""Every query Herald makes. Functions here flush; the caller's unit of work commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    bindparam,
    delete,
    false,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import ListFilter, StoredAttempt, StoredNotification
from app.store.models import Attempt, IdempotencyKey, Notification
from app.store.sql import ATTEMPTS, NOTIFICATIONS, Row, notify_due


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
        stmt = select(table).order_by(table.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(table.c.id < before_id)
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
        rows = (await self.session.execute(stmt)).mappings()
        return [cast(StoredNotification, dict(row)) for row in rows]

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
    ) -> StoredNotification | None:
        """Change a notification only if its status is one of ``from_statuses``; ``values`` by
        column name.

        One conditional UPDATE, so a worker claiming the row at the same moment cannot be
        overwritten: exactly one of the two wins.
        """
        table = NOTIFICATIONS
        stmt = (
            update(table)
            .where(table.c.id == notification_id, table.c.status.in_(from_statuses))
            .values(**values)
            .returning(*table.c)
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        return None if row is None else cast(StoredNotification, dict(row))

    # --- worker -------------------------------------------------------------------------

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[Claimed]:
        """Mark up to ``limit`` due notifications ``delivering`` under this worker's lease.

        ``FOR UPDATE SKIP LOCKED`` on PostgreSQL lets many workers claim side by side without
        waiting on each other; SQLite ignores it and serialises writers (``BEGIN IMMEDIATE``).
        (The worker on PostgreSQL sends this statement as plain SQL: ``app.store.delivery``.)
        """
        table = NOTIFICATIONS
        due = (
            select(table.c.id)
            .where(table.c.status == "pending", table.c.next_attempt_at <= now)
            .order_by(table.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(table)
            .where(table.c.id.in_(due.scalar_subquery()))
            .values(
                status="delivering",
                claimed_by=worker_id,
                lease_expires_at=lease_until,
                updated_at=now,
            )
            .returning(*(table.c[name] for name in CLAIMED_COLUMNS))
        )
        connection = await self.session.connection()
        return [Claimed(*row) for row in await connection.execute(stmt)]

    async def save_rounds(
        self, rounds: Sequence[FinishedRound], *, worker_id: str
    ) -> set[uuid.UUID]:
        """Write finished rounds (new state and attempts together) whose lease is still ours.

        Returns the ids that were saved. A round whose notification this worker no longer holds
        (the lease ran out and another worker took it over, or it was released) is skipped
        whole: neither its attempts nor its state are written, so it is not counted twice.

        However many rounds: one statement locks the rows still ours (in id order, so two
        transactions locking several rows cannot deadlock), one executemany UPDATE per set of
        changed columns writes them, one INSERT writes all their attempts.
        Core, not the unit of work: no identity map, no per-object flush bookkeeping
        (bench/results/levers.md, "group commit").
        ``values`` are keyed by model attribute, as ``update(Notification).values`` takes them.
        """
        if not rounds:
            return set()
        held = _held_by(worker_id, [finished.notification_id for finished in rounds])
        ours = set((await self.session.scalars(_in_lock_order(held))).all())
        if not ours:
            return ours
        kept = [finished for finished in rounds if finished.notification_id in ours]
        # The SET clause comes from the parameters' keys: one executemany per set of columns.
        update_held = update(Notification).where(
            Notification.id == bindparam("b_id"), *_held(worker_id)
        )
        connection = await self.session.connection()
        for group in group_by_columns(kept).values():
            await connection.execute(
                update_held,
                [
                    params | {"b_id": notification_id, "claimed_by": None, "lease_expires_at": None}
                    for notification_id, params in group
                ],
            )
        attempt_rows = [attempt for finished in kept for attempt in finished.attempts]
        if attempt_rows:
            await connection.execute(insert(Attempt), attempt_rows)
        return ours

    async def extend_leases(
        self, ids: Sequence[uuid.UUID], *, worker_id: str, lease_until: datetime
    ) -> int:
        """Move this worker's leases on ``ids`` to ``lease_until`` (rounds still running)."""
        if not ids:
            return 0
        stmt = (
            update(Notification)
            .where(Notification.id.in_(_locked_in_order(_held_by(worker_id, ids))))
            .where(*_held(worker_id))
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
            .where(Notification.id.in_(_locked_in_order(_held_by(worker_id, ids))))
            .where(*_held(worker_id))
            .values(status="pending", claimed_by=None, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(stmt)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def recover_expired_leases(self, now: datetime) -> int:
        """Return notifications whose worker died mid-delivery to ``pending``, due at once."""
        expired = (Notification.status == "delivering", Notification.lease_expires_at < now)
        stmt = (
            update(Notification)
            .where(Notification.id.in_(_locked_in_order(select(Notification.id).where(*expired))))
            .where(*expired)
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
        await notify_due(self.session, self.session.get_bind().dialect)

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

    async def purge_older_than(self, cutoff: datetime) -> int:
        result = await self.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Claimed:
    """What the worker reads of a notification it claimed (columns by name, ``metadata``)."""

    id: uuid.UUID
    route: str | None
    strategy: str
    channels: list[str]
    recipient: dict[str, Any]
    subject: str | None
    text: str | None
    html: str | None
    severity: str
    source: str | None
    metadata: dict[str, Any]
    retry_schedule: list[float]
    retry_jitter: float
    round: int
    round_base: int
    trigger: str
    attempt_count: int
    hops: list[dict[str, Any]]
    expires_at: datetime | None
    created_at: datetime


CLAIMED_COLUMNS = tuple(Claimed.__dataclass_fields__)
"""The columns a claim returns, in ``Claimed``'s order."""


@dataclass(frozen=True, slots=True)
class FinishedRound:
    """What one round changes: the notification's new values (by model attribute) and its
    ``attempts`` rows."""

    notification_id: uuid.UUID
    values: dict[str, Any]
    attempts: Sequence[Row]


def group_by_columns(
    rounds: Sequence[FinishedRound],
) -> dict[tuple[str, ...], list[tuple[uuid.UUID, Row]]]:
    """Each round's new values by column name, grouped by the columns they change (one
    executemany ``UPDATE`` a group), with the notification's id."""
    groups: dict[tuple[str, ...], list[tuple[uuid.UUID, Row]]] = {}
    for finished in rounds:
        params = {_COLUMN_OF[key]: value for key, value in finished.values.items()}
        groups.setdefault(tuple(sorted(params)), []).append((finished.notification_id, params))
    return groups


def _held(worker_id: str) -> tuple[ColumnElement[bool], ...]:
    """A notification this worker holds under its lease."""
    return (Notification.status == "delivering", Notification.claimed_by == worker_id)


def _held_by(worker_id: str, ids: Sequence[uuid.UUID]) -> Select[uuid.UUID]:
    return select(Notification.id).where(Notification.id.in_(ids), *_held(worker_id))


def _in_lock_order(ids: Select[uuid.UUID]) -> Select[uuid.UUID]:
    """``ids``' rows locked in id order (PostgreSQL; SQLite has one writer at a time).

    Every statement that locks several notification rows in one transaction (saving a batch of
    rounds, renewing, releasing, sweeping leases) takes them in the same order, so two of them
    cannot deadlock on each other.
    """
    return ids.order_by(Notification.id).with_for_update()


def _locked_in_order(ids: Select[uuid.UUID]) -> ScalarSelect[uuid.UUID]:
    """``_in_lock_order`` as a subquery, for ``UPDATE … WHERE id IN (…)``."""
    return _in_lock_order(ids).scalar_subquery()


_COLUMN_OF = {attr.key: attr.columns[0].key for attr in inspect(Notification).column_attrs}
"""Model attribute → column name (``metadata_`` → ``metadata``)."""


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


IDEMPOTENCY_RETENTION = timedelta(hours=24)

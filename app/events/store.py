"""Every query of the events feature: the dispatcher's claim, save, release and sweep, and the
event log's reads and redelivery. Functions here execute; the caller's unit of work commits
(the dispatcher's steps are each their own short transaction, opened here)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain import (
    OPEN_EVENT_DELIVERIES,
    AttemptTrigger,
    Event,
    EventDeliveryStatus,
    EventType,
)
from app.events.body import CONTENT_COLUMNS, content
from app.events.outbox import Outbox, delivery_row
from app.store.models import EventAttempt, EventDelivery, EventRecord
from app.store.sql import EVENT_DELIVERIES, EVENTS, NOTIFICATIONS, Row

EVENT_ATTEMPTS = cast(Table, EventAttempt.__table__)


def event_of(record: EventRecord | Any) -> Event:
    """The domain event of an ``events`` row (a model or a Core row)."""
    return Event(
        id=record.id,
        type=EventType(record.type),
        timestamp=record.created_at,
        notification_id=record.notification_id,
        owner=record.owner,
        route=record.route,
        data=record.data,
    )


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """One event claimed for one subscription, with what sending it needs."""

    seq: int
    subscription: str
    url: str | None
    """A callback's URL (``None``: the subscription's own)."""
    attempts: int
    attempt_base: int
    trigger: AttemptTrigger
    event: Event
    content: dict[str, Any] | None
    """``data.content`` when the subscription includes content and the notification exists."""


@dataclass(frozen=True, slots=True)
class FinishedDelivery:
    """What one try changes: the delivery's new values and its ``event_attempts`` row."""

    seq: int
    values: Row
    attempt: Row


_D = EVENT_DELIVERIES


def _held(worker_id: str) -> tuple[Any, ...]:
    return (_D.c.status == EventDeliveryStatus.DELIVERING, _D.c.claimed_by == worker_id)


class DispatchStore:
    """The dispatcher's steps, each one short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        subscriptions: Collection[str],
        with_content: Collection[str],
        limit: int,
    ) -> list[ClaimedDelivery]:
        """Mark up to ``limit`` due deliveries to ``subscriptions`` ``delivering`` under this
        dispatcher's lease, oldest due first.

        A delivery waits while an earlier event of the same notification is not settled for
        the same subscription (pending, or being sent), so one notification's events reach a
        subscription in the order they happened. ``FOR UPDATE SKIP LOCKED`` lets dispatchers
        on PostgreSQL claim side by side; SQLite serialises writers.
        """
        if not subscriptions or limit <= 0:
            return []
        earlier = _D.alias("earlier")
        blocked = (
            select(earlier.c.seq)
            .where(
                earlier.c.subscription == _D.c.subscription,
                earlier.c.notification_id == _D.c.notification_id,
                earlier.c.seq < _D.c.seq,
                earlier.c.status.in_(OPEN_EVENT_DELIVERIES),
            )
            .exists()
        )
        due = (
            select(_D.c.seq)
            .where(
                _D.c.status == EventDeliveryStatus.PENDING,
                _D.c.next_attempt_at <= now,
                _D.c.subscription.in_(subscriptions),
                ~blocked,
            )
            .order_by(_D.c.next_attempt_at, _D.c.seq)
            .limit(limit)
            .with_for_update(of=_D, skip_locked=True)
        )
        stmt = (
            update(_D)
            .where(_D.c.seq.in_(due.scalar_subquery()))
            .values(
                status=EventDeliveryStatus.DELIVERING,
                claimed_by=worker_id,
                lease_expires_at=lease_until,
                updated_at=now,
            )
            .returning(
                _D.c.seq,
                _D.c.event_id,
                _D.c.subscription,
                _D.c.url,
                _D.c.attempts,
                _D.c.attempt_base,
                _D.c.trigger,
            )
        )
        async with self.sessions() as session, session.begin():
            claimed = (await session.execute(stmt)).all()
            if not claimed:
                return []
            ids = {row.event_id for row in claimed}
            events = {
                row.id: event_of(row)
                for row in await session.execute(select(EVENTS).where(EVENTS.c.id.in_(ids)))
            }
            # Content is read once per notification, for the subscriptions that include it.
            wanted = {
                events[row.event_id].notification_id
                for row in claimed
                if row.subscription in with_content
            }
            wanted.discard(None)
            contents = await _contents(session, wanted) if wanted else {}
        return [
            ClaimedDelivery(
                seq=row.seq,
                subscription=row.subscription,
                url=row.url,
                attempts=row.attempts,
                attempt_base=row.attempt_base,
                trigger=AttemptTrigger(row.trigger),
                event=(event := events[row.event_id]),
                content=contents.get(event.notification_id)
                if row.subscription in with_content
                else None,
            )
            for row in sorted(claimed, key=lambda row: row.seq)
        ]

    async def save(self, finished: Sequence[FinishedDelivery], *, worker_id: str) -> set[int]:
        """Write tries whose delivery this dispatcher still holds (new values and attempt row
        together, in one transaction); the ``seq`` of those written. A try whose lease was lost
        (the sweep gave the delivery to another dispatcher) is dropped whole."""
        saved: set[int] = set()
        async with self.sessions() as session, session.begin():
            for done in finished:
                result = await session.execute(
                    update(_D).where(_D.c.seq == done.seq, *_held(worker_id)).values(**done.values)
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    saved.add(done.seq)
            attempts = [done.attempt for done in finished if done.seq in saved]
            if attempts:
                await session.execute(insert(EVENT_ATTEMPTS), attempts)
        return saved

    async def release(
        self, due: Sequence[tuple[int, datetime]], *, worker_id: str, now: datetime
    ) -> int:
        """Hand claimed deliveries back untried, each due again at its time (shutdown, or a
        subscription whose circuit is open); no attempt is counted."""
        if not due:
            return 0
        stmt = (
            update(_D)
            .where(_D.c.seq == bindparam("b_seq"), *_held(worker_id))
            .values(
                status=EventDeliveryStatus.PENDING,
                claimed_by=None,
                lease_expires_at=None,
                next_attempt_at=bindparam("b_next"),
                updated_at=now,
            )
        )
        async with self.sessions() as session, session.begin():
            connection = await session.connection()
            result = await connection.execute(
                stmt, [{"b_seq": seq, "b_next": when} for seq, when in due]
            )
        return int(result.rowcount)

    async def recover_expired_leases(self, now: datetime) -> int:
        """Return deliveries whose dispatcher died mid-send to ``pending``, due at once."""
        stmt = (
            update(_D)
            .where(
                _D.c.status == EventDeliveryStatus.DELIVERING,
                _D.c.lease_expires_at < now,
            )
            .values(
                status=EventDeliveryStatus.PENDING,
                claimed_by=None,
                lease_expires_at=None,
                next_attempt_at=now,
                updated_at=now,
            )
        )
        async with self.sessions() as session, session.begin():
            result = await session.execute(stmt)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def append(self, outbox: Outbox, events: Sequence[Event]) -> list[Event]:
        """Write events that no other change carries (a channel's circuit moved) in a
        transaction of their own; those written."""
        async with self.sessions() as session, session.begin():
            return await outbox.append(session, events)

    async def unsettled(self) -> dict[str, int]:
        """Deliveries pending or being sent, per subscription."""
        stmt = (
            select(_D.c.subscription, func.count())
            .where(_D.c.status.in_(OPEN_EVENT_DELIVERIES))
            .group_by(_D.c.subscription)
        )
        async with self.sessions() as session:
            return {name: count for name, count in (await session.execute(stmt)).all()}


async def _contents(
    session: AsyncSession, notification_ids: Collection[uuid.UUID | None]
) -> dict[uuid.UUID | None, dict[str, Any]]:
    columns = [NOTIFICATIONS.c[name] for name in CONTENT_COLUMNS]
    stmt = select(NOTIFICATIONS.c.id, *columns).where(NOTIFICATIONS.c.id.in_(notification_ids))
    return {row.id: content(dict(row._mapping)) for row in await session.execute(stmt)}


# --- the event log (API) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    type: EventType | None = None
    notification_id: uuid.UUID | None = None
    since: datetime | None = None
    owner: str | None = None
    """Only this owner's events (a key without ``admin``); ``None``: everyone's."""


class EventLog:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, event_id: uuid.UUID, *, owner: str | None = None) -> EventRecord | None:
        stmt = select(EventRecord).where(EventRecord.id == event_id)
        if owner is not None:
            stmt = stmt.where(EventRecord.owner == owner)
        return (await self.session.scalars(stmt)).one_or_none()

    async def list(
        self, filters: EventFilter, *, limit: int, before_id: uuid.UUID | None
    ) -> Sequence[EventRecord]:
        """Newest first by id (ids are time-ordered); ``before_id`` is the cursor."""
        stmt = select(EventRecord).order_by(EventRecord.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(EventRecord.id < before_id)
        if filters.type is not None:
            stmt = stmt.where(EventRecord.type == filters.type)
        if filters.notification_id is not None:
            stmt = stmt.where(EventRecord.notification_id == filters.notification_id)
        if filters.since is not None:
            stmt = stmt.where(EventRecord.created_at >= filters.since)
        if filters.owner is not None:
            stmt = stmt.where(EventRecord.owner == filters.owner)
        return (await self.session.scalars(stmt)).all()

    async def deliveries(self, event_id: uuid.UUID) -> Sequence[EventDelivery]:
        stmt = select(EventDelivery).where(EventDelivery.event_id == event_id)
        return (await self.session.scalars(stmt.order_by(EventDelivery.seq))).all()

    async def attempts(self, event_id: uuid.UUID) -> Sequence[EventAttempt]:
        stmt = (
            select(EventAttempt)
            .where(EventAttempt.event_id == event_id)
            .order_by(EventAttempt.started_at, EventAttempt.id)
        )
        return (await self.session.scalars(stmt)).all()

    async def redeliver(self, event: Event, subscriptions: Collection[str], now: datetime) -> None:
        """Queue ``event`` again for ``subscriptions``: a settled delivery starts a new set of
        retries (``trigger: manual``); one being sent or waiting is left as it is; a
        subscription with none (added to the config since) gets one."""
        existing = {d.subscription: d for d in await self.deliveries(event.id)}
        settled = [
            name
            for name in subscriptions
            if name in existing and existing[name].status not in OPEN_EVENT_DELIVERIES
        ]
        if settled:
            await self.session.execute(
                update(EventDelivery)
                .where(
                    EventDelivery.event_id == event.id,
                    EventDelivery.subscription.in_(settled),
                    EventDelivery.status.not_in(OPEN_EVENT_DELIVERIES),
                )
                .values(
                    status=EventDeliveryStatus.PENDING,
                    attempt_base=EventDelivery.attempts,
                    trigger=AttemptTrigger.MANUAL,
                    next_attempt_at=now,
                    delivered_at=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
        missing = [name for name in subscriptions if name not in existing]
        if missing:
            rows = [
                delivery_row(event, name, now) | {"trigger": AttemptTrigger.MANUAL}
                for name in missing
            ]
            await self.session.execute(insert(EVENT_DELIVERIES), rows)

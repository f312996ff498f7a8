"""Every query of the events feature: the dispatcher's claim, save, release and sweep, and the
event log's reads and redelivery.

The dispatcher's statements (``DispatchStatements``) are SQLAlchemy Core built once per database
and run as the worker's are (``app.store.queue.database_of``): plain SQL on the pooled asyncpg
connection on PostgreSQL, through SQLAlchemy on SQLite. A claim is one statement in autocommit,
a save of many tries one short transaction
(bench/results/levers.md, "claim and save as plain statements"). The event log's functions run
in the caller's session, which commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, literal_column, select, text, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.domain import (
    OPEN_EVENT_DELIVERIES,
    AttemptTrigger,
    Event,
    EventDeliveryStatus,
    EventType,
)
from app.events.body import CONTENT_COLUMNS, content
from app.events.outbox import delivery_row
from app.store.models import EventAttempt, EventDelivery, EventRecord
from app.store.queue import among, database_of, picked, recovery, still_held
from app.store.sql import (
    EVENT_DELIVERIES,
    EVENTS,
    NOTIFICATIONS,
    Row,
    newest_first,
    notify_events,
    status_is,
)

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
    """What one try changes: the delivery's new values (``TRY_COLUMNS``) and its
    ``event_attempts`` row."""

    seq: int
    values: Row
    attempt: Row


@dataclass(frozen=True, slots=True)
class ReleasedDelivery:
    """A claimed delivery handed back untried (shutdown, or its circuit let nothing through),
    due again at ``due``; no attempt is counted."""

    seq: int
    due: datetime


Settled = FinishedDelivery | ReleasedDelivery
"""What a dispatcher writes of a delivery it holds."""

TRY_COLUMNS = ("status", "attempts", "next_attempt_at", "delivered_at", "last_error", "updated_at")
"""The columns every try writes (``FinishedDelivery.values``); the lease ends with it."""

_D = EVENT_DELIVERIES
_CLAIMED = (
    _D.c.seq,
    _D.c.event_id,
    _D.c.subscription,
    _D.c.url,
    _D.c.attempts,
    _D.c.attempt_base,
    _D.c.trigger,
)
_EVENT = (
    EVENTS.c.id,
    EVENTS.c.type,
    EVENTS.c.created_at,
    EVENTS.c.notification_id,
    EVENTS.c.owner,
    EVENTS.c.route,
    EVENTS.c.data,
)
"""An event's columns in ``Event``'s field order."""


class DispatchStatements:
    """Every statement of the dispatcher's loop, built once for one database.

    Each names the statuses it looks for in its SQL text (``status_is``), as the partial
    indexes on them need. Statements that lock several deliveries take them in ``seq`` order.
    """

    def __init__(self, dialect: Dialect) -> None:
        held = (
            status_is(_D.c.status, EventDeliveryStatus.DELIVERING),
            _D.c.claimed_by == bindparam("worker_id"),
        )
        """Held by ``:worker_id`` under its lease."""
        unclaimed = {"claimed_by": None, "lease_expires_at": None}

        earlier = _D.alias("earlier")
        blocked = (
            select(earlier.c.seq)
            .where(
                earlier.c.subscription == _D.c.subscription,
                earlier.c.notification_id == _D.c.notification_id,
                earlier.c.seq < _D.c.seq,
                status_is(earlier.c.status, *OPEN_EVENT_DELIVERIES),
            )
            .offset(literal_column("0"))
            .exists()
        )
        """An earlier delivery of the same notification to the same subscription is not
        settled. ``OFFSET 0`` keeps PostgreSQL from turning the check into a join: as a join,
        on a table not analyzed yet (a new or truncated one), its planner compared every due
        delivery with every open one; as a subquery it is one probe of
        ``ix_event_deliveries_open`` per candidate, whatever the statistics."""
        due = (
            select(_D.c.seq)
            .where(
                status_is(_D.c.status, EventDeliveryStatus.PENDING),
                _D.c.next_attempt_at <= bindparam("now"),
                among(_D.c.subscription, "subscriptions", dialect),
                ~blocked,
            )
            .order_by(_D.c.next_attempt_at, _D.c.seq)
            .limit(bindparam("limit"))
            .with_for_update(of=_D, skip_locked=True)
        )
        self.claim = (
            update(_D)
            .where(picked(_D.c.seq, due))
            .values(
                status=EventDeliveryStatus.DELIVERING,
                claimed_by=bindparam("worker_id"),
                lease_expires_at=bindparam("lease_until"),
                updated_at=bindparam("now"),
            )
            .returning(*_CLAIMED)
        )
        """Up to ``:limit`` deliveries to ``:subscriptions`` due at ``:now``, oldest due first
        (``ix_event_deliveries_due`` is on ``next_attempt_at, seq``: the claim reads due rows in
        that order and stops at ``:limit``, instead of sorting every due row), none while an
        earlier event of its notification is unsettled for its subscription (so one
        notification's events reach a subscription in the order they happened), marked
        delivering under ``:worker_id``'s lease until ``:lease_until``; their ``_CLAIMED``
        columns. ``SKIP LOCKED`` lets dispatchers on PostgreSQL claim side by side; SQLite
        has one writer at a time."""

        self.events = select(*_EVENT).where(among(EVENTS.c.id, "ids", dialect))
        """The events of ``:ids``."""

        self.contents = select(
            NOTIFICATIONS.c.id, *(NOTIFICATIONS.c[name] for name in CONTENT_COLUMNS)
        ).where(among(NOTIFICATIONS.c.id, "ids", dialect))
        """What ``data.content`` shows of the notifications of ``:ids``."""

        self.lock_held = (
            select(_D.c.seq)
            .where(among(_D.c.seq, "seqs", dialect), *held)
            .order_by(_D.c.seq)
            .with_for_update()
        )
        """The deliveries of ``:seqs`` that ``:worker_id`` still holds, locked; their seqs."""

        self.save_try = update(_D).where(_D.c.seq == bindparam("b_seq"), *held).values(**unclaimed)
        """One try's ``TRY_COLUMNS`` (its parameters named as columns) on ``:b_seq``; the lease
        ends."""

        self.add_attempts = insert(EVENT_ATTEMPTS)
        """``event_attempts`` rows (every column given)."""

        self.release = (
            update(_D)
            .where(_D.c.seq == bindparam("b_seq"), *held)
            .values(
                status=EventDeliveryStatus.PENDING,
                next_attempt_at=bindparam("b_due"),
                updated_at=bindparam("now"),
                **unclaimed,
            )
        )
        """``:b_seq`` handed back untried, due again at ``:b_due``."""

        self.recover = recovery(
            _D.c.seq, pending=EventDeliveryStatus.PENDING, held=EventDeliveryStatus.DELIVERING
        )
        """Deliveries whose lease ran out before ``:now`` (their dispatcher died), pending and
        due at once."""


FIRST_STATISTICS_AT = 1000
"""Deliveries in a never analyzed ``event_deliveries`` at which a dispatcher analyzes it."""

_NEVER_ANALYZED = text(
    "SELECT n_live_tup + n_dead_tup FROM pg_stat_user_tables"
    " WHERE relid = 'event_deliveries'::regclass"
    " AND last_analyze IS NULL AND last_autoanalyze IS NULL"
)


class DispatchStore:
    """The dispatcher's steps: each a statement in autocommit or one short transaction."""

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.statements = DispatchStatements(engine.dialect)
        self._database = database_of(engine)
        self._postgresql = engine.dialect.name == "postgresql"

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
        dispatcher's lease (``DispatchStatements.claim``), with their events, in ``seq``
        order; ``data.content`` for the ones to ``with_content``."""
        if not subscriptions or limit <= 0:
            return []
        statements = self.statements
        params = {
            "worker_id": worker_id,
            "now": now,
            "lease_until": lease_until,
            "subscriptions": list(subscriptions),
            "limit": limit,
        }
        async with self._database.autocommit(statements.claim) as connection:
            claimed = await connection.rows(statements.claim, params)
            if not claimed:
                return []
            ids = list({row[1] for row in claimed})
            rows = await connection.rows(statements.events, {"ids": ids})
            events = {row[0]: Event(row[0], EventType(row[1]), *row[2:]) for row in rows}
            # Content is read once per notification, for the subscriptions that include it.
            wanted = {events[row[1]].notification_id for row in claimed if row[2] in with_content}
            wanted.discard(None)
            contents: dict[Any, dict[str, Any]] = {}
            if wanted:
                names = ("id", *CONTENT_COLUMNS)
                rows = await connection.rows(statements.contents, {"ids": list(wanted)})
                contents = {row[0]: content(dict(zip(names, row, strict=True))) for row in rows}
        return [
            ClaimedDelivery(
                seq=seq,
                subscription=subscription,
                url=url,
                attempts=attempts,
                attempt_base=attempt_base,
                trigger=AttemptTrigger(trigger),
                event=(event := events[event_id]),
                content=contents.get(event.notification_id)
                if subscription in with_content
                else None,
            )
            for seq, event_id, subscription, url, attempts, attempt_base, trigger in sorted(
                claimed, key=lambda row: row[0]
            )
            if event_id in events  # else deleted since, and its delivery with it (cascade)
        ]

    async def save(self, settled: Sequence[Settled], *, worker_id: str, now: datetime) -> set[int]:
        """Write tries, and hand back deliveries untried, whose delivery this dispatcher still
        holds, in one transaction (a try's new values and its attempt row together); the
        ``seq`` of those written. One whose lease was lost (the sweep gave the delivery to
        another dispatcher) is dropped whole."""
        if not settled:
            return set()
        statements = self.statements
        seqs = [item.seq for item in settled]
        async with self._database.transaction(statements.lock_held) as connection:
            ours: set[int] = await still_held(
                connection, statements.lock_held, {"seqs": seqs, "worker_id": worker_id}
            )
            if not ours:
                return ours
            tries = [
                item for item in settled if isinstance(item, FinishedDelivery) and item.seq in ours
            ]
            if tries:
                await connection.many(
                    statements.save_try,
                    [done.values | {"b_seq": done.seq, "worker_id": worker_id} for done in tries],
                )
                await connection.many(statements.add_attempts, [done.attempt for done in tries])
            released = [
                {"b_seq": item.seq, "b_due": item.due, "now": now, "worker_id": worker_id}
                for item in settled
                if isinstance(item, ReleasedDelivery) and item.seq in ours
            ]
            if released:
                await connection.many(statements.release, released)
        return ours

    async def recover_expired_leases(self, now: datetime) -> int:
        """Return deliveries whose dispatcher died mid-send to ``pending``, due at once."""
        recover = self.statements.recover
        async with self._database.autocommit(recover) as connection:
            return await connection.count(recover, {"now": now})

    async def analyze_if_never(self) -> bool:
        """PostgreSQL: ``ANALYZE event_deliveries`` if it was never analyzed and holds
        ``FIRST_STATISTICS_AT`` rows or more; whether it did.

        Without statistics the planner reads the claim's subscriptions through
        ``ix_event_deliveries_open`` and sorts every pending delivery to take a few (tens of
        milliseconds a claim at thousands pending) instead of reading ``ix_event_deliveries_due``
        in order (bench/results/levers.md, "statistics for a new event_deliveries"): on a new
        database that lasts until autovacuum first analyzes the table, a minute or more.
        """
        if not self._postgresql:
            return False
        async with self.sessions() as session:
            rows = (await session.execute(_NEVER_ANALYZED)).scalar()
            if rows is None or rows < FIRST_STATISTICS_AT:
                return False
            await session.execute(text("ANALYZE event_deliveries"))
            await session.commit()
        return True

    async def unsettled(self) -> dict[str, int]:
        """Deliveries pending or being sent, per subscription."""
        stmt = (
            select(_D.c.subscription, func.count())
            .where(status_is(_D.c.status, *OPEN_EVENT_DELIVERIES))
            .group_by(_D.c.subscription)
        )
        async with self.sessions() as session:
            return {name: count for name, count in (await session.execute(stmt)).all()}


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
        stmt = newest_first(select(EventRecord), EventRecord.id, limit=limit, before_id=before_id)
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

    async def deliveries_of(
        self, event_ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, Sequence[EventDelivery]]:
        """``deliveries`` of each of ``event_ids`` (those with any), in one query."""
        found: dict[uuid.UUID, list[EventDelivery]] = {}
        if not event_ids:
            return {}
        stmt = select(EventDelivery).where(EventDelivery.event_id.in_(list(event_ids)))
        for delivery in await self.session.scalars(stmt.order_by(EventDelivery.seq)):
            found.setdefault(delivery.event_id, []).append(delivery)
        return dict(found)

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
        subscription with none (added to the config since) gets one. The event dispatchers
        hear of it on commit (``NOTIFY``)."""
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
        await notify_events(self.session, self.session.get_bind().dialect)

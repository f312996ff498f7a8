"""The outbox: events are written in the transaction of the change that causes them.

An event is never lost (it commits with its change) and never announced for a change that
rolled back (it rolls back with it). Each event is written once to ``events`` and once per
subscription that takes it to ``event_deliveries``, which the dispatcher works through; an event
no subscription takes is not written at all, so a Herald without subscriptions does no work
for events (``Outbox.wants`` lets a caller skip building them).

The caller's unit of work commits; ``append`` only executes. After the commit the caller counts
what it wrote (``count_emitted``), so a rollback is never counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import metrics
from app.config import SubscriptionConfig
from app.delivery.orchestrator import utcnow
from app.domain import AttemptTrigger, Event, EventDeliveryStatus, EventType
from app.store.models import EventDelivery, EventRecord
from app.store.sql import Row, bind_processors

EVENTS = cast(Table, EventRecord.__table__)
EVENT_DELIVERIES = cast(Table, EventDelivery.__table__)


def event_row(event: Event) -> Row:
    return {
        "id": event.id,
        "type": event.type,
        "notification_id": event.notification_id,
        "owner": event.owner,
        "route": event.route,
        "data": event.data,
        "created_at": event.timestamp,
    }


def delivery_row(event: Event, subscription: str, now: datetime) -> Row:
    """A new ``event_deliveries`` row: due at once (``seq`` comes from the database)."""
    return {
        "event_id": event.id,
        "subscription": subscription,
        "notification_id": event.notification_id,
        "status": EventDeliveryStatus.PENDING,
        "attempts": 0,
        "attempt_base": 0,
        "trigger": AttemptTrigger.SCHEDULED,
        "next_attempt_at": now,
        "claimed_by": None,
        "lease_expires_at": None,
        "last_error": None,
        "delivered_at": None,
        "created_at": now,
        "updated_at": now,
    }


class _DriverInsert:
    """``INSERT INTO table (columns) VALUES ($1, …)`` for the driver connection (asyncpg),
    with the values passed through SQLAlchemy's bind processors as the ORM would."""

    def __init__(self, table: Table, dialect: Dialect, columns: Sequence[str]) -> None:
        processors = bind_processors(table, dialect)
        self.columns = list(columns)
        self.processors = [processors[name] for name in self.columns]
        places = ", ".join(f"${i + 1}" for i in range(len(self.columns)))
        self.sql = f"INSERT INTO {table.name} ({', '.join(self.columns)}) VALUES ({places})"

    def args(self, row: Row) -> list[Any]:
        return [
            row[name] if process is None else process(row[name])
            for name, process in zip(self.columns, self.processors, strict=True)
        ]


class Outbox:
    """Which subscriptions take which events, and the writing of events with their change."""

    def __init__(self, subscriptions: Sequence[SubscriptionConfig], dialect: Dialect) -> None:
        self.subscriptions = {subscription.name: subscription for subscription in subscriptions}
        self._by_type = {
            event_type: tuple(s for s in subscriptions if event_type in s.event_types)
            for event_type in EventType
        }
        self._events = _DriverInsert(EVENTS, dialect, [c.name for c in EVENTS.columns])
        self._deliveries = _DriverInsert(
            EVENT_DELIVERIES, dialect, [c.name for c in EVENT_DELIVERIES.columns if c.name != "seq"]
        )

    def wants(self, event_type: EventType, *, route: str | None, owner: str | None) -> bool:
        """Whether any subscription takes such an event (if none, there is nothing to build)."""
        return any(s.takes(event_type, route, owner) for s in self._by_type[event_type])

    def takers(self, event: Event) -> list[str]:
        """The names of the subscriptions that take ``event``, in config order."""
        return [
            s.name
            for s in self._by_type[event.type]
            if s.takes(event.type, event.route, event.owner)
        ]

    def rows(
        self, events: Iterable[Event], now: datetime | None = None
    ) -> tuple[list[Event], list[Row], list[Row]]:
        """The events some subscription takes, their ``events`` rows and their
        ``event_deliveries`` rows (in event order: the order ``seq`` will keep)."""
        now = now or utcnow()
        kept: list[Event] = []
        deliveries: list[Row] = []
        for event in events:
            takers = self.takers(event)
            if takers:
                kept.append(event)
                deliveries.extend(delivery_row(event, name, now) for name in takers)
        return kept, [event_row(event) for event in kept], deliveries

    async def append(
        self,
        executor: AsyncSession | AsyncConnection,
        events: Iterable[Event],
        *,
        now: datetime | None = None,
    ) -> list[Event]:
        """Write ``events`` in ``executor``'s transaction (a session or a Core connection);
        the ones written (those some subscription takes)."""
        kept, event_rows, deliveries = self.rows(events, now)
        if kept:
            await executor.execute(insert(EVENTS), event_rows)
            await executor.execute(insert(EVENT_DELIVERIES), deliveries)
        return kept

    async def append_driver(
        self, connection: Any, events: Iterable[Event], *, now: datetime | None = None
    ) -> list[Event]:
        """``append`` on a driver (asyncpg) connection inside its open transaction, for a
        change written in plain SQL (``app.store.delivery``)."""
        kept, event_rows, deliveries = self.rows(events, now)
        if kept:
            await connection.executemany(
                self._events.sql, [self._events.args(row) for row in event_rows]
            )
            await connection.executemany(
                self._deliveries.sql, [self._deliveries.args(row) for row in deliveries]
            )
        return kept


def count_emitted(events: Iterable[Event]) -> None:
    """Count events once their transaction committed (``herald_events_emitted_total``)."""
    for event in events:
        metrics.events_emitted.labels(event.type).inc()

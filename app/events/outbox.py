"""The outbox: events are written in the transaction of the change that causes them.

An event is never lost (it commits with its change) and never announced for a change that
rolled back (it rolls back with it). Each event is written once to ``events`` and once per
taker to ``event_deliveries``, which the dispatcher works through: each subscription that takes
it, and the notification's own callback (``callback_url``) when that takes it. An event nobody
takes is not written at all, and not even built: each change asks the outbox for its events
(``accepted``, ``of_round``, ``cancelled``), which first checks cheaply whether anyone wants
them, so a Herald without subscriptions or callbacks does no work for events.

The rows (``OutboxRows``) are written by the change's own store, in its own statement or
transaction: the accept's single statement (``Intake``), the worker's save of its rounds
(``WorkQueue``: with the channel circuit changes queued meanwhile), a session
(``app.store.sql.write_events``: a cancel). Each of these transactions also sends
``NOTIFY herald_events`` on PostgreSQL, which wakes the event dispatchers of every process.
After the commit the caller counts what it wrote (``count_emitted``), so a rollback is never
counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import metrics
from app.config import EventsConfig
from app.delivery.orchestrator import Outcome, utcnow
from app.domain import (
    CALLBACK,
    FINAL_EVENTS,
    AttemptOutcome,
    AttemptTrigger,
    Callback,
    Event,
    EventDeliveryStatus,
    EventType,
    Hop,
    NotificationStatus,
    Receipt,
    StoredNotification,
)
from app.events import body
from app.events.body import CircuitChange, channel_event
from app.store.sql import OutboxRows, Row, write_events


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


def delivery_row(event: Event, subscription: str, now: datetime, url: str | None = None) -> Row:
    """A new ``event_deliveries`` row: due at once (``seq`` comes from the database); ``url``
    for a callback."""
    return {
        "event_id": event.id,
        "subscription": subscription,
        "url": url,
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


class Outbox:
    """Who takes which events, the events of each change, and their rows."""

    def __init__(self, config: EventsConfig) -> None:
        subscriptions = config.subscriptions
        self.subscriptions = {subscription.name: subscription for subscription in subscriptions}
        self.callbacks = config.callback_secret is not None
        """Whether callbacks are sent (``events.callback_secret`` is configured)."""
        self._by_type = {
            event_type: tuple(s for s in subscriptions if event_type in s.event_types)
            for event_type in EventType
        }

    def callback(self, url: str | None, globs: Sequence[str] | None) -> Callback | None:
        """A notification's callback, while callbacks are sent."""
        return Callback.of(url, globs) if self.callbacks else None

    def wants(
        self,
        event_type: EventType,
        *,
        route: str | None,
        owner: str | None,
        callback: Callback | None = None,
    ) -> bool:
        """Whether any subscription, or ``callback``, takes such an event (if none, there is
        nothing to build)."""
        return (callback is not None and callback.takes(event_type)) or any(
            s.takes(event_type, route, owner) for s in self._by_type[event_type]
        )

    def takers(self, event: Event, callback: Callback | None = None) -> list[str]:
        """The names of the subscriptions that take ``event``, in config order, then
        ``callback`` when the notification's callback takes it."""
        names = [
            s.name
            for s in self._by_type[event.type]
            if s.takes(event.type, event.route, event.owner)
        ]
        if callback is not None and callback.takes(event.type):
            names.append(CALLBACK)
        return names

    def rows(
        self,
        events: Iterable[Event],
        now: datetime | None = None,
        callbacks: Mapping[uuid.UUID, Callback] | None = None,
    ) -> OutboxRows:
        """The rows of the events somebody takes (``callbacks``: by notification id), in
        event order: the order ``seq`` will keep."""
        now = now or utcnow()
        kept: list[Event] = []
        deliveries: list[Row] = []
        for event in events:
            callback = None
            if callbacks and event.notification_id is not None:
                callback = callbacks.get(event.notification_id)
            takers = self.takers(event, callback)
            if takers:
                kept.append(event)
                deliveries.extend(
                    delivery_row(event, name, now, callback.url if callback else None)
                    if name == CALLBACK
                    else delivery_row(event, name, now)
                    for name in takers
                )
        return OutboxRows(kept, [event_row(event) for event in kept], deliveries)

    async def append(
        self,
        executor: AsyncSession | AsyncConnection,
        events: Iterable[Event],
        *,
        now: datetime | None = None,
    ) -> list[Event]:
        """Write events that belong to no notification's callback (a channel's circuit
        moved) in ``executor``'s transaction; the ones written (those some subscription
        takes)."""
        rows = self.rows(events, now)
        await write_events(executor, rows)
        return list(rows.events)

    # --- the events of each change ------------------------------------------------------

    def accepted(self, notifications: Sequence[StoredNotification]) -> OutboxRows | None:
        """``notification.accepted`` of each newly stored notification somebody wants it of;
        ``None`` when nobody does."""
        if not self.callbacks and not self._by_type[EventType.NOTIFICATION_ACCEPTED]:
            return None
        events: list[Event] = []
        callbacks: dict[uuid.UUID, Callback] = {}
        for notification in notifications:
            callback = self.callback(notification["callback_url"], notification["callback_events"])
            wanted = self.wants(
                EventType.NOTIFICATION_ACCEPTED,
                route=notification["route"],
                owner=notification["owner"],
                callback=callback,
            )
            if not wanted:
                continue
            events.append(
                body.notification_event(
                    notification_id=notification["id"],
                    owner=notification["owner"],
                    route=notification["route"],
                    status=NotificationStatus.PENDING,
                    delivered_via=None,
                    hops=[Hop.from_dict(hop) for hop in notification["hops"]],
                    at=notification["created_at"],
                )
            )
            if callback is not None:
                callbacks[notification["id"]] = callback
        return self.rows(events, notifications[0]["created_at"], callbacks) if events else None

    def of_round(
        self,
        *,
        notification_id: uuid.UUID,
        owner: str | None,
        route: str | None,
        callback: Callback | None,
        outcome: Outcome,
        at: datetime,
        circuits: Sequence[CircuitChange] = (),
    ) -> OutboxRows | None:
        """What a round (or an expiry) decided (``body.round_events``), if anybody wants it,
        after the events of the channel ``circuits`` that moved meanwhile (``CircuitChanges``:
        they are written with the round that saves next); ``None`` when nobody wants any."""
        if callback is None and not self.subscriptions:
            return None
        events = [event for change in circuits if (event := channel_event(change)) is not None]
        wanted = (
            outcome.final
            and self.wants(
                FINAL_EVENTS[outcome.status], route=route, owner=owner, callback=callback
            )
        ) or (
            self.wants(EventType.ATTEMPT_FAILED, route=route, owner=owner, callback=callback)
            and any(record.outcome is AttemptOutcome.FAILED for record in outcome.attempts)
        )
        if wanted:
            events += body.round_events(
                notification_id=notification_id, owner=owner, route=route, outcome=outcome, at=at
            )
        if not events:
            return None
        callbacks = {notification_id: callback} if callback is not None else None
        return self.rows(events, at, callbacks) or None

    def cancelled(
        self, notification: StoredNotification, hops: Sequence[Hop], at: datetime
    ) -> OutboxRows | None:
        """``notification.cancelled`` of ``notification`` (its ``hops`` once cancelled), if
        anybody wants it; ``None`` when nobody does."""
        return self._ended(notification, NotificationStatus.CANCELLED, hops, at)

    def acknowledged(
        self,
        notification: StoredNotification,
        hops: Sequence[Hop],
        acknowledgement: Mapping[str, Any],
        at: datetime,
    ) -> OutboxRows | None:
        """``notification.acknowledged`` of ``notification`` (its ``hops`` once settled), if
        anybody wants it; ``None`` when nobody does."""
        return self._ended(notification, NotificationStatus.ACKNOWLEDGED, hops, at, acknowledgement)

    def _ended(
        self,
        notification: StoredNotification,
        status: NotificationStatus,
        hops: Sequence[Hop],
        at: datetime,
        acknowledgement: Mapping[str, Any] | None = None,
    ) -> OutboxRows | None:
        """The final ``status``'s event of a notification ended from outside its rounds."""
        callback = self.callback(notification["callback_url"], notification["callback_events"])
        route, owner = notification["route"], notification["owner"]
        if not self.wants(FINAL_EVENTS[status], route=route, owner=owner, callback=callback):
            return None
        event = body.notification_event(
            notification_id=notification["id"],
            owner=owner,
            route=route,
            status=status,
            delivered_via=notification["delivered_via"],
            hops=hops,
            at=at,
            acknowledgement=acknowledgement,
        )
        callbacks = {notification["id"]: callback} if callback is not None else None
        return self.rows([event], at, callbacks)

    def receipt(
        self,
        notification: Mapping[str, Any],
        attempt: Mapping[str, Any],
        receipt: Receipt,
        at: datetime,
    ) -> OutboxRows | None:
        """``attempt.receipt`` for a receipt just matched to ``attempt`` (an ``attempts``
        row) of ``notification`` (its columns), if anybody wants it."""
        callback = self.callback(notification["callback_url"], notification["callback_events"])
        route, owner = notification["route"], notification["owner"]
        if not self.wants(EventType.ATTEMPT_RECEIPT, route=route, owner=owner, callback=callback):
            return None
        state = body.summary(
            status=NotificationStatus(notification["status"]),
            route=route,
            delivered_via=notification["delivered_via"],
            hops=[Hop.from_dict(hop) for hop in notification["hops"]],
        )
        event = body.receipt_event(
            notification_id=attempt["notification_id"],
            owner=owner,
            route=route,
            state=state,
            attempt=attempt,
            receipt=receipt,
            at=at,
        )
        callbacks = (
            {event.notification_id: callback} if callback and event.notification_id else None
        )
        return self.rows([event], at, callbacks)


def count_emitted(events: Iterable[Event]) -> None:
    """Count events once their transaction committed (``herald_events_emitted_total``)."""
    for event in events:
        metrics.events_emitted.labels(event.type).inc()

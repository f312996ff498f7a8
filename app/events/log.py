"""What the event log API does: read an event the caller may see, redeliver one. Each call that
writes is one unit of work and commits once; ``store.EventLog`` below it only executes."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.orchestrator import utcnow
from app.domain import CALLBACK
from app.errors import Conflict, NotFound
from app.events.store import EventLog, event_of
from app.runtime import Runtime
from app.store.models import EventRecord


class EventNotFound(NotFound):
    """No event with that id (or none the caller may see)."""

    def __init__(self, event_id: object) -> None:
        super().__init__(f"no event with id {event_id}")


class NoSubscriptionTakes(Conflict):
    """Redelivery asked of an event that no configured subscription (nor its notification's
    callback) takes (any more)."""

    def __init__(self, event_id: object) -> None:
        super().__init__(f"no configured subscription takes event {event_id}")


async def get(session: AsyncSession, event_id: uuid.UUID, *, owner: str | None) -> EventRecord:
    record = await EventLog(session).get(event_id, owner=owner)
    if record is None:
        raise EventNotFound(event_id)
    return record


async def redeliver(
    runtime: Runtime, session: AsyncSession, event_id: uuid.UUID, *, owner: str | None
) -> EventRecord:
    """Queue an event again for every configured subscription that takes it, and for the
    notification's callback when it was sent there and callbacks are still sent
    (``EventLog.redeliver``)."""
    record = await get(session, event_id, owner=owner)
    event = event_of(record)
    events = EventLog(session)
    takers = runtime.outbox.takers(event)
    if runtime.outbox.callbacks and any(
        delivery.subscription == CALLBACK for delivery in await events.deliveries(event_id)
    ):
        takers.append(CALLBACK)
    if not takers:
        raise NoSubscriptionTakes(event_id)
    await events.redeliver(event, takers, utcnow())
    await session.commit()
    runtime.wake_events()
    return record

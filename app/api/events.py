"""``/v1/events``: the event log (so a receiver that was down can catch up) and redelivery.

The events themselves, as subscriptions receive them, are documented as the ``webhooks`` of
the OpenAPI document (``webhooks``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminScope, ReadScope, RuntimeDep, SessionDep, owner_filter
from app.api.event_schemas import (
    AttemptFailedEvent,
    AttemptReceiptEvent,
    ChannelEvent,
    EventAttemptList,
    EventAttemptOut,
    EventDeliveryOut,
    EventDetail,
    EventOut,
    EventPage,
    NotificationEvent,
)
from app.api.paging import Cursor, Limit, aware, cursor_id
from app.api.problems import AUTH_ERRORS, error_responses
from app.api.schemas import Output
from app.domain import CHANNEL_EVENTS, EventType
from app.events import log
from app.events.store import EventFilter, EventLog, event_of
from app.store.models import EventRecord

router = APIRouter(prefix="/v1/events", tags=["events"])


def out(record: EventRecord) -> EventOut:
    return EventOut.model_validate(event_of(record).body())


async def detail(session: SessionDep, record: EventRecord) -> EventDetail:
    deliveries = await EventLog(session).deliveries(record.id)
    return EventDetail(
        **out(record).model_dump(),
        deliveries=[EventDeliveryOut.model_validate(d, from_attributes=True) for d in deliveries],
    )


@router.get(
    "",
    operation_id="list_events",
    response_model=EventPage,
    summary="List events, newest first",
    responses=error_responses(422, 503) | AUTH_ERRORS,
)
async def list_events(
    principal: ReadScope,
    session: SessionDep,
    type: EventType | None = None,
    notification_id: uuid.UUID | None = None,
    since: Annotated[
        datetime | None, Query(description="Only events that happened at or after this time.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> EventPage:
    """Only the events of the caller's own notifications, unless its key has the admin scope
    (channel events belong to no one: admin only). An event is kept when at least one
    subscription, or its notification's callback_url, takes it."""
    before_id = cursor_id(cursor)
    filters = EventFilter(
        type=type,
        notification_id=notification_id,
        since=aware(since, "since"),
        owner=owner_filter(principal),
    )
    rows = await EventLog(session).list(filters, limit=limit + 1, before_id=before_id)
    page = rows[:limit]
    return EventPage(
        items=[out(record) for record in page],
        next_cursor=str(page[-1].id) if len(rows) > limit else None,
    )


@router.get(
    "/{event_id}",
    operation_id="get_event",
    response_model=EventDetail,
    summary="An event and where it stands for each subscription",
    responses=error_responses(404, 422, 503) | AUTH_ERRORS,
)
async def get_event(event_id: uuid.UUID, principal: ReadScope, session: SessionDep) -> EventDetail:
    """Another API key's event is 404 unless the caller's key has the admin scope."""
    return await detail(session, await log.get(session, event_id, owner=owner_filter(principal)))


@router.get(
    "/{event_id}/attempts",
    operation_id="list_event_attempts",
    response_model=EventAttemptList,
    summary="Every try to deliver an event, oldest first",
    responses=error_responses(404, 422, 503) | AUTH_ERRORS,
)
async def list_event_attempts(
    event_id: uuid.UUID, principal: ReadScope, session: SessionDep
) -> EventAttemptList:
    """Another API key's event is 404 unless the caller's key has the admin scope."""
    await log.get(session, event_id, owner=owner_filter(principal))
    attempts = await EventLog(session).attempts(event_id)
    return EventAttemptList(
        items=[EventAttemptOut.model_validate(a, from_attributes=True) for a in attempts]
    )


@router.post(
    "/{event_id}/redeliver",
    operation_id="redeliver_event",
    response_model=EventDetail,
    summary="Send an event again to every subscription that takes it",
    responses=error_responses(404, 409, 422, 503) | AUTH_ERRORS,
)
async def redeliver_event(
    event_id: uuid.UUID, principal: AdminScope, runtime: RuntimeDep, session: SessionDep
) -> EventDetail:
    """A delivery that ended (delivered or failed) starts a new set of retries; one still
    queued or being sent is left as it is; a subscription added since that takes the event
    gets it too, and so does the notification's callback_url if it got it. 409 when none
    does."""
    record = await log.redeliver(runtime, session, event_id, owner=owner_filter(principal))
    return await detail(session, record)


# --- webhooks: the events as subscriptions receive them ---------------------------------------

WEBHOOK_BODIES: dict[EventType, type[Output]] = {
    event_type: ChannelEvent
    if event_type in CHANNEL_EVENTS
    else AttemptFailedEvent
    if event_type is EventType.ATTEMPT_FAILED
    else AttemptReceiptEvent
    if event_type is EventType.ATTEMPT_RECEIPT
    else NotificationEvent
    for event_type in EventType
}

_HEADERS = {
    "webhook-id": "The event id: the same on every retry, so a receiver can drop duplicates.",
    "webhook-timestamp": "Unix seconds when this try was sent.",
    "webhook-signature": 'v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">, '
    "keyed with the subscription's secret (whsec_<base64>): the Standard Webhooks scheme.",
}
RECEIVED = {
    "2XX": {
        "description": "Received. Any other answer, or none within the subscription's timeout, "
        "is a failed try, retried as a channel's failure is (4xx and 3xx are not retried)."
    }
}


async def _received() -> None:
    """Stands for the subscriber's endpoint; only documented, never served."""


webhook_router = APIRouter()
"""One webhook per event type. Each body model is declared as a response model so that FastAPI
writes its schema in serialization form, as for the API's responses (a model both use, ``Hop``,
keeps one schema); ``app.main.openapi_spec`` then moves it to the request body."""
for _type, _model in WEBHOOK_BODIES.items():
    webhook_router.add_api_route(
        _type.value,
        _received,
        methods=["POST"],
        response_model=_model,
        tags=["events"],
        summary=f"{_type.value}, as sent to a subscription",
        description=(_model.__doc__ or "").strip(),
        operation_id="event_" + _type.value.replace(".", "_"),
        openapi_extra={
            "parameters": [
                {
                    "name": name,
                    "in": "header",
                    "required": True,
                    "description": text,
                    "schema": {"type": "string"},
                }
                for name, text in _HEADERS.items()
            ]
        },
    )

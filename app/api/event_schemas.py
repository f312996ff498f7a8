"""Bodies of the event log API and of the events Herald sends (``webhooks:`` in
``openapi.yaml``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from app.api.schemas import Acknowledgement, ErrorInfo, Hop, Output, ReceiptOut
from app.channels.base import Recipient
from app.domain import (
    EVENT_VERSION,
    AttemptOutcome,
    AttemptTrigger,
    CircuitState,
    EventDeliveryStatus,
    EventType,
    NotificationStatus,
    Severity,
)

# --- the event log ---------------------------------------------------------------------------


class EventOut(Output):
    """An event as it was sent (without ``data.content``, which is added per subscription)."""

    id: uuid.UUID = Field(description="UUIDv7; the webhook-id header of every try.")
    type: EventType
    timestamp: datetime = Field(description="When it happened.")
    version: int = Field(description="Version of the body's shape.")
    notification_id: uuid.UUID | None = Field(description="Null for a channel event.")
    owner: str | None = Field(description="The API key that owns the notification, if any.")
    data: dict[str, Any] = Field(
        description="The notification's summary (status, route, delivered_via, hops), with the "
        "failed attempt for attempt.failed; the channel's circuit for channel.* events. See the "
        "webhooks of this document for each type's shape."
    )


class EventDeliveryOut(Output):
    """Where the event stands for one subscription."""

    subscription: str = Field(
        description="The subscription's name; callback for the notification's callback_url."
    )
    status: EventDeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: ErrorInfo | None


class EventDetail(EventOut):
    deliveries: list[EventDeliveryOut]


class EventPage(Output):
    items: list[EventOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page.")


class EventAttemptOut(Output):
    id: uuid.UUID
    event_id: uuid.UUID
    subscription: str
    attempt: int = Field(description="1 for the first try of this event to this subscription.")
    trigger: AttemptTrigger = Field(description="manual: after a redelivery.")
    outcome: AttemptOutcome
    error: ErrorInfo | None
    response_status: int | None
    response_excerpt: str | None
    started_at: datetime
    duration_ms: int


class EventAttemptList(Output):
    items: list[EventAttemptOut]


# --- the bodies sent to subscriptions (documented as webhooks) --------------------------------


class EventContent(Output):
    """The message as accepted: only for a subscription with include_content: true."""

    subject: str | None
    text: str | None
    html: str | None
    severity: Severity
    source: str | None
    metadata: dict[str, Any]
    recipient: Recipient


class NotificationEventData(Output):
    # content is sent only to subscriptions that ask for it: not required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    status: NotificationStatus
    route: str | None = Field(description="The route, or null for an inline chain.")
    delivered_via: str | list[str] | None
    hops: list[Hop]
    content: EventContent | None = Field(
        default=None, description="Present only when the subscription has include_content."
    )
    acknowledgement: Acknowledgement | None = Field(
        default=None, description="notification.acknowledged only: who, when and how."
    )


class EventAttemptInfo(Output):
    """The failed attempt of an attempt.failed event."""

    channel: str
    channel_type: str
    round: int
    hop: int = Field(description="Index of the channel in the notification's chain.")
    trigger: AttemptTrigger
    error: ErrorInfo
    provider_status: int | None
    started_at: datetime
    duration_ms: int


class AttemptFailedData(NotificationEventData):
    attempt: EventAttemptInfo


class ReceiptAttemptInfo(EventAttemptInfo):
    """The attempt a receipt is about (error: null while it counts as delivered)."""

    error: ErrorInfo | None  # type: ignore[assignment]


class AttemptReceiptData(NotificationEventData):
    attempt: ReceiptAttemptInfo
    receipt: ReceiptOut


class ChannelEventData(Output):
    channel: str
    channel_type: str
    state: CircuitState
    reason: str | None = Field(description="Why the circuit opened (null when it closed).")
    cooldown_seconds: float = Field(description="How long it stays open before a trial.")


class _Envelope(Output):
    id: uuid.UUID = Field(description="UUIDv7, also the webhook-id header (the same on retries).")
    type: EventType
    timestamp: datetime = Field(description="When it happened (RFC 3339, UTC).")
    version: Literal[1] = Field(description=f"Version of the body's shape ({EVENT_VERSION}).")
    notification_id: uuid.UUID | None
    owner: str | None = Field(description="The API key that owns the notification, if any.")


class NotificationEvent(_Envelope):
    """notification.accepted, .delivered, .partial, .failed, .expired, .cancelled or
    .acknowledged."""

    notification_id: uuid.UUID
    data: NotificationEventData


class AttemptFailedEvent(_Envelope):
    """attempt.failed: one attempt of a notification failed (skipped hops are not failures)."""

    notification_id: uuid.UUID
    data: AttemptFailedData


class AttemptReceiptEvent(_Envelope):
    """attempt.receipt: the provider said later what became of an attempt's message (Twilio's
    status callback, WhatsApp's statuses)."""

    notification_id: uuid.UUID
    data: AttemptReceiptData


class ChannelEvent(_Envelope):
    """channel.circuit_opened, channel.circuit_closed or channel.quarantined."""

    notification_id: None = Field(description="Always null: about a channel.")
    data: ChannelEventData

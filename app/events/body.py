"""The events of each change, built from domain values: pure, no I/O.

These are what the code that makes a change calls, inside the transaction that writes it, before
handing the events to the outbox (``Outbox.append``). A notification event's ``data`` is the
notification's summary (``status``, ``route``, ``delivered_via``, ``hops``): never a message body
or a secret. Hops carry each hop's last error, redacted once by the orchestrator like every
stored error. ``content`` is what a subscription with ``include_content: true`` gets as
``data.content`` (the dispatcher reads it from the notification when it sends).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.delivery.orchestrator import Outcome
from app.domain import (
    FINAL_EVENTS,
    AttemptOutcome,
    CircuitState,
    Event,
    EventType,
    Hop,
    NotificationStatus,
    Receipt,
    rfc3339,
)
from app.ids import uuid7
from app.nesting import shown


def summary(
    *,
    status: NotificationStatus,
    route: str | None,
    delivered_via: str | list[str] | None,
    hops: Sequence[Hop],
) -> dict[str, Any]:
    """What every notification event says of its notification."""
    return {
        "status": status,
        "route": route,
        "delivered_via": delivered_via,
        "hops": [hop.as_dict() for hop in hops],
    }


def notification_event(
    *,
    notification_id: uuid.UUID,
    owner: str | None,
    route: str | None,
    status: NotificationStatus,
    delivered_via: str | list[str] | None,
    hops: Sequence[Hop],
    at: datetime,
    acknowledgement: Mapping[str, Any] | None = None,
) -> Event:
    """The event a notification's new ``status`` is announced by: ``notification.accepted``
    for ``pending`` (only the accept makes a notification pending with an event), the final
    status's event otherwise (``cancelled`` by a cancel, ``acknowledged`` by an
    acknowledgement, which adds ``data.acknowledgement``; the others come from a round:
    ``round_events``). ``at``: when it changed."""
    data = summary(status=status, route=route, delivered_via=delivered_via, hops=hops)
    if acknowledgement is not None:
        data["acknowledgement"] = dict(acknowledgement)
    return Event(
        id=uuid7(),
        type=STATUS_EVENTS[status],
        timestamp=at,
        notification_id=notification_id,
        owner=owner,
        route=route,
        data=data,
    )


def acknowledgement_data(at: datetime, by: str, via: str) -> dict[str, Any]:
    """``data.acknowledgement`` of ``notification.acknowledged``, as the API shows it too."""
    return {"at": rfc3339(at), "by": by, "via": via}


def receipt_event(
    *,
    notification_id: uuid.UUID,
    owner: str | None,
    route: str | None,
    state: Mapping[str, Any],
    attempt: Mapping[str, Any],
    receipt: Receipt,
    at: datetime,
) -> Event:
    """``attempt.receipt``: the provider's later word about a sent attempt. ``state``: the
    notification's ``summary``; ``attempt``: its ``attempts`` row;
    ``at``: when Herald received the receipt."""
    return Event(
        id=uuid7(),
        type=EventType.ATTEMPT_RECEIPT,
        timestamp=at,
        notification_id=notification_id,
        owner=owner,
        route=route,
        data={
            **state,
            "attempt": stored_attempt_data(attempt),
            "receipt": receipt_data(receipt),
        },
    )


def receipt_data(receipt: Receipt) -> dict[str, Any]:
    """A receipt as the attempt resource and ``attempt.receipt`` show it."""
    return {"status": receipt.status, "at": rfc3339(receipt.at), "code": receipt.code}


def stored_attempt_data(row: Mapping[str, Any]) -> dict[str, Any]:
    """An attempt event's ``data.attempt`` (``attempt.failed``, ``attempt.receipt``): where
    and how the attempt went, read from its ``attempts`` row."""
    error = None
    if row["error_class"] is not None:
        error = {
            "class": row["error_class"],
            "code": row["error_code"],
            "message": row["error_message"],
        }
    return {
        "channel": row["channel"],
        "channel_type": row["channel_type"],
        "round": row["round"],
        "hop": row["hop"],
        "trigger": row["trigger"],
        "error": error,
        "provider_status": row["provider_status"],
        "started_at": rfc3339(row["started_at"]),
        "duration_ms": row["duration_ms"],
    }


STATUS_EVENTS = {NotificationStatus.PENDING: EventType.NOTIFICATION_ACCEPTED, **FINAL_EVENTS}
"""The statuses a notification event announces; ``delivering`` is none of them."""


def round_events(
    *,
    notification_id: uuid.UUID,
    owner: str | None,
    route: str | None,
    outcome: Outcome,
    at: datetime,
) -> list[Event]:
    """What one round (or an expiry) decided, in the order it happened: an ``attempt.failed``
    per failed attempt (a skipped hop is not a failure), then the final status's event when
    the notification reached one. A round that leaves it ``pending`` with no failure says
    nothing. ``at``: when the round was decided (the final event's timestamp)."""
    state = summary(
        status=outcome.status,
        route=route,
        delivered_via=outcome.delivered_via,
        hops=outcome.hops,
    )
    events = [
        Event(
            id=uuid7(),
            type=EventType.ATTEMPT_FAILED,
            timestamp=record.started_at,
            notification_id=notification_id,
            owner=owner,
            route=route,
            data={**state, "attempt": stored_attempt_data(record.row(notification_id))},
        )
        for record in outcome.attempts
        if record.outcome is AttemptOutcome.FAILED
    ]
    if outcome.final:
        final = notification_event(
            notification_id=notification_id,
            owner=owner,
            route=route,
            status=outcome.status,
            delivered_via=outcome.delivered_via,
            hops=outcome.hops,
            at=at,
            acknowledgement=outcome.acknowledgement,
        )
        events.append(final)
    return events


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """A channel's circuit moved (seen by the process whose deliveries moved it)."""

    channel: str
    channel_type: str
    state: CircuitState
    quarantined: bool
    """Opened by a ``config`` failure (401/403, auth, TLS) rather than by transient ones."""
    reason: str | None
    cooldown: float
    at: datetime


def channel_event(change: CircuitChange) -> Event | None:
    """``channel.circuit_opened``, ``channel.quarantined`` or ``channel.circuit_closed``;
    ``None`` for half-open (a trial is under way: not an event of its own)."""
    if change.state is CircuitState.HALF_OPEN:
        return None
    if change.state is CircuitState.CLOSED:
        event_type = EventType.CHANNEL_CIRCUIT_CLOSED
    elif change.quarantined:
        event_type = EventType.CHANNEL_QUARANTINED
    else:
        event_type = EventType.CHANNEL_CIRCUIT_OPENED
    return Event(
        id=uuid7(),
        type=event_type,
        timestamp=change.at,
        notification_id=None,
        owner=None,
        route=None,
        data={
            "channel": change.channel,
            "channel_type": change.channel_type,
            "state": change.state,
            "reason": change.reason,
            "cooldown_seconds": change.cooldown,
        },
    )


CONTENT_COLUMNS = ("subject", "text", "html", "severity", "source", "metadata", "recipient")
"""The ``notifications`` columns ``content`` reads."""


def content(notification: Mapping[str, Any]) -> dict[str, Any]:
    """``data.content`` for a subscription with ``include_content: true``: the message as it
    was accepted (the columns of ``CONTENT_COLUMNS``)."""
    return {
        "subject": notification["subject"],
        "text": notification["text"],
        "html": notification["html"],
        "severity": notification["severity"],
        "source": notification["source"],
        "metadata": shown(notification["metadata"]),
        "recipient": {k: v for k, v in notification["recipient"].items() if v is not None},
    }

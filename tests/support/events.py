"""Events in tests: subscriptions to local receivers, events written as a change would write
them, a dispatcher on the harness's clock, and signature checks with ``standardwebhooks``."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook

from app.delivery.orchestrator import utcnow
from app.domain import Event, Hop, NotificationStatus
from app.events import body
from app.events.dispatcher import Dispatcher
from app.events.outbox import count_emitted
from tests.support.harness import Harness
from tests.support.http_server import HttpServer, Received

EVENTS_SECRET = "whsec_" + base64.b64encode(b"herald-events-signing-key-32byte").decode()
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"herald-callback-signing-key-32by").decode()


def subscription(url: str, name: str = "ops", **options: Any) -> dict[str, Any]:
    """A subscription to ``url`` with a fixed retry schedule and no jitter."""
    return {
        "name": name,
        "url": url,
        "secret": EVENTS_SECRET,
        "retry": {"schedule": ["5s", "1m"], "jitter": 0},
        "timeout": "2s",
        **options,
    }


def events_config(
    *subscriptions: dict[str, Any], callbacks: bool = False, **sections: Any
) -> dict[str, Any]:
    """A Herald with a log channel, a default route and these subscriptions; with
    ``callbacks``, a ``callback_secret`` (``CALLBACK_SECRET``) too."""
    events: dict[str, Any] = {"subscriptions": list(subscriptions)}
    if callbacks:
        events["callback_secret"] = CALLBACK_SECRET
    return {
        "channels": {"console": {"type": "log"}},
        "routes": {"default": {"channels": ["console"]}, "other": {"channels": ["console"]}},
        "events": events,
        **sections,
    }


def dispatcher(h: Harness, **options: Any) -> Dispatcher:
    return Dispatcher(h.runtime, clock=h.clock, monotonic=h.clock.monotonic, **options)


async def emit(h: Harness, *events: Event) -> list[Event]:
    """Write events as a change would, in a transaction of their own; those written."""
    async with h.runtime.sessions() as session, session.begin():
        written = await h.runtime.outbox.append(session, events, now=h.clock())
    count_emitted(written)
    return written


def accepted(
    notification_id: uuid.UUID | None = None,
    *,
    owner: str | None = None,
    route: str | None = "default",
    chain: Sequence[str] = ("console",),
    h: Harness | None = None,
) -> Event:
    """A ``notification.accepted`` event (for a notification that need not exist)."""
    return body.notification_event(
        notification_id=notification_id or uuid.uuid4(),
        owner=owner,
        route=route,
        status=NotificationStatus.PENDING,
        delivered_via=None,
        hops=[Hop(channel=name) for name in chain],
        at=h.clock() if h is not None else utcnow(),
    )


def delivered(event: Event, *, via: str = "console", at: datetime | None = None) -> Event:
    """The ``notification.delivered`` event that follows ``event`` for the same notification
    (``at``: its time; ``event``'s by default)."""
    assert event.notification_id is not None
    return body.notification_event(
        notification_id=event.notification_id,
        owner=event.owner,
        route=event.route,
        status=NotificationStatus.DELIVERED,
        delivered_via=via,
        hops=[Hop(channel=via)],
        at=at or event.timestamp,
    )


def verified(request: Received, secret: str = EVENTS_SECRET) -> dict[str, Any]:
    """The body of a request to a subscription (or a callback: its ``secret``), after checking
    its signature."""
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == payload["id"]
    return payload


def received(sink: HttpServer, path: str, secret: str = EVENTS_SECRET) -> list[dict[str, Any]]:
    """Every verified body that reached ``path``, in arrival order."""
    return [verified(request, secret) for request in sink.requests_to(path)]


async def drain(h: Harness, **options: Any) -> int:
    """Dispatch until nothing more is due at the harness's clock; how many tries."""
    sender = dispatcher(h, **options)
    total = 0
    while claimed := await sender.run_once():
        total += claimed
    return total

"""Finished rounds as the worker hands them to its store, for tests that drive the store itself.

Each belongs to a notification claimed on a route of one webhook channel named ``hook``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.domain import AttemptTrigger, Hop, HopState, NotificationStatus, RoundUpdate
from app.ids import uuid7
from app.store.models import Attempt
from app.store.queue import Claimed, FinishedRound
from app.store.sql import Row
from tests.support.harness import Harness


def attempt_of(h: Harness, notification: Claimed, **fields: Any) -> Row:
    """An ``attempts`` row, every column given (None unless set), as the worker makes them."""
    return {column.name: None for column in Attempt.__table__.columns} | {
        "id": uuid7(),
        "notification_id": notification.id,
        "channel": "hook",
        "channel_type": "webhook",
        "round": notification.round + 1,
        "hop": 0,
        "trigger": AttemptTrigger.SCHEDULED,
        "started_at": h.clock(),
        "duration_ms": 3,
        **fields,
    }


def delivered_round(h: Harness, notification: Claimed) -> FinishedRound:
    """The first round, delivered by ``hook``."""
    now = h.clock()
    attempt = attempt_of(h, notification, outcome="delivered", provider_status=200)
    change = RoundUpdate(
        status=NotificationStatus.DELIVERED,
        hops=[Hop("hook", HopState.DELIVERED, attempts=1)],
        next_attempt_at=None,
        updated_at=now,
        round=notification.round + 1,
        trigger=AttemptTrigger.SCHEDULED,
        attempt_count=1,
        delivered_via="hook",
        delivered_at=now,
    )
    return FinishedRound(notification.id, change, [attempt])


def failed_round(h: Harness, notification: Claimed) -> FinishedRound:
    """The first round, failed as ``transient`` (``http_503``): another round in 5 s."""
    now = h.clock()
    attempt = attempt_of(
        h,
        notification,
        outcome="failed",
        error_class="transient",
        error_code="http_503",
        error_message="503",
        provider_status=503,
    )
    error = {"channel": "hook", "class": "transient", "code": "http_503", "message": "503"}
    change = RoundUpdate(
        status=NotificationStatus.PENDING,
        hops=[Hop("hook", HopState.RETRYING, attempts=1, last_error=error)],
        next_attempt_at=now + timedelta(seconds=5),
        updated_at=now,
        round=notification.round + 1,
        trigger=AttemptTrigger.SCHEDULED,
        attempt_count=1,
        last_error=error,
    )
    return FinishedRound(notification.id, change, [attempt])

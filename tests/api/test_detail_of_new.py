"""``NotificationDetail.of_new`` (the 202 body of a new notification) answers the JSON that
``model_validate`` of the same row answers, for every kind of row an accept builds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from app.api.schemas import NotificationDetail
from app.domain import StoredNotification
from tests.api.conftest import BASIC_CONFIG
from tests.support.events import CALLBACK_SECRET
from tests.support.harness import herald

NIGHT = {"timezone": "Europe/Berlin", "from": "22:00", "to": "07:00", "hops": ["backup"]}
CONFIG: dict[str, Any] = {
    **BASIC_CONFIG,
    "routes": {
        **BASIC_CONFIG["routes"],
        "held": {"channels": ["console", "backup"], "confirm": {"within": "10m"}},
        "acked": {
            "channels": [{"channel": "console", "ack_within": "5m"}, "backup"],
            "strategy": "escalate",
        },
        "noisy": {"channels": ["console"], "dedup": {"window": "10m", "mode": "collapse"}},
        "daily": {"channels": ["console"], "digest": {"window": "1d", "max_items": 20}},
        "night": {"channels": ["console", "backup"], "quiet_hours": NIGHT},
    },
    "templates": {
        **BASIC_CONFIG["templates"],
        "per-type": {
            "subject": "Hi {{ name }}",
            "text": "Hello, {{ name }}.",
            "overrides": {"log": {"text": "log: {{ name }}"}},
        },
    },
    "events": {"callback_secret": CALLBACK_SECRET},
}

BODIES: dict[str, dict[str, Any]] = {
    "minimal": {"text": "x"},
    "everything-plain": {
        "route": "alerts",
        "subject": "Disk almost full ✓",
        "text": 'db-1: / at 93%\n\t"quoted" \\ \u0001 \U0001f525',
        "html": "<b>x</b>",
        "severity": "critical",
        "source": "bench",
        "metadata": {"host": "db-1", "n": [1, 2.5, -0.0, 1e300, None, True], "deep": {"a": {}}},
    },
    "channels": {"channels": ["console", "backup"], "text": "x"},
    "send_at-utc": {"text": "x", "send_at": "2099-01-01T00:00:00Z"},
    "send_at-offset": {"text": "x", "send_at": "2099-01-01T12:30:00.250+05:30"},
    "send_at-and-ttl": {"route": "broadcast", "text": "x", "send_at": "2099-06-01T00:00:00Z"},
    "expires_at": {"text": "x", "expires_at": "2099-01-01T00:00:00.000001-08:00"},
    "ttl": {"route": "broadcast", "text": "x"},
    "recipient": {
        "text": "x",
        "recipient": {
            "email": ["a@example.com", "jörg@bücher.example"],
            "phone": "+1 415 555 0100",
            "telegram_chat_id": "-100123",
            "webhook_url": "http://127.0.0.1:9/hook?a=1",
            "quiet_hours": NIGHT,
        },
    },
    "template": {"route": "alerts", "template": "greeting", "data": {"name": "<Ada>"}},
    "template-per-type": {"template": "per-type", "data": {"name": "Ada"}},
    "callback": {"text": "x", "callback_url": "http://127.0.0.1:9/cb"},
    "callback-events": {
        "text": "x",
        "callback_url": "http://127.0.0.1:9/cb",
        "callback_events": ["notification.*"],
    },
    "holds-confirm": {"route": "held", "text": "x"},
    "holds-ack": {"route": "acked", "text": "x"},
    "dedup": {"route": "noisy", "text": "x", "dedup_key": "disk-db-1"},
    "digest": {"route": "daily", "text": "x", "recipient": {"email": "a@example.com"}},
    "quiet-hours": {"route": "night", "text": "x"},
    "metadata-empty": {"text": "x", "metadata": {}},
}


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``of_new`` the accepts make, checked against ``model_validate``; the ids seen."""
    of_new = NotificationDetail.of_new.__func__  # type: ignore[attr-defined]
    seen: list[str] = []

    def checked(cls: type[NotificationDetail], row: Mapping[str, Any]) -> NotificationDetail:
        detail: NotificationDetail = of_new(cls, row)
        fast = detail.model_dump_json(warnings="error")
        assert fast == NotificationDetail.model_validate(row).model_dump_json()
        assert detail == NotificationDetail.model_validate(row)
        seen.append(str(row["id"]))
        return detail

    monkeypatch.setattr(NotificationDetail, "of_new", classmethod(checked))
    yield seen


async def test_every_kind_of_new_row_answers_as_model_validate(
    db_url: str, compared: list[str]
) -> None:
    async with herald(db_url, CONFIG) as h:
        for case, body in BODIES.items():
            response = await h.client.post("/v1/notifications", json=body)
            assert response.status_code == 202, (case, response.text)
            assert compared[-1] == response.json()["id"], case
        assert len(compared) == len(BODIES)


def test_a_row_that_is_not_new_is_validated() -> None:
    row: StoredNotification = {"last_error": {"message": "x"}, "acknowledged_at": None}  # type: ignore[typeddict-item]
    with pytest.raises(ValueError):  # validated: the rest of the row is missing
        NotificationDetail.of_new(row)

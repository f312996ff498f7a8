"""The 202 body of a new notification, serialized without the model (``new_detail_json``), is
byte for byte what ``NotificationDetail`` makes of the same row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app import service
from app.api.schemas import NotificationCreate, NotificationDetail, new_detail_json
from app.channels.registry import default_registry
from app.config import parse_config
from tests.api.conftest import BASIC_CONFIG

CONFIG = parse_config(
    {
        **BASIC_CONFIG,
        "routes": {
            **BASIC_CONFIG["routes"],
            "daily": {"channels": ["console"], "digest": {"window": "1d", "max_items": 20}},
            "once": {"channels": ["console"], "dedup": {"window": "10m", "mode": "collapse"}},
        },
        "templates": {
            **BASIC_CONFIG["templates"],
            "disk": {
                "subject": "{{ host }}",
                "text": "disk at {{ pct }}%",
                "overrides": {"webhook": {"text": "{{ pct }}"}, "log": {"subject": "x"}},
            },
        },
    },
    default_registry(),
)
NIGHT = {"timezone": "Europe/Berlin", "from": "22:00", "to": "07:00", "hops": ["webhook"]}

BODIES: list[dict[str, Any]] = [
    {"text": "plain"},
    {
        "subject": "Disk almost full",
        "text": "db-1: / at 93%",
        "severity": "warning",
        "source": "bench",
        "metadata": {"host": "db-1", "check": "disk"},
    },
    {"route": "alerts", "html": '<p>ünïcödé \u2028 \U0001f600 "quoted" \\ \t</p>'},
    {"channels": ["console", "backup"], "text": "inline chain"},
    {"route": "broadcast", "text": "ttl route", "send_at": "2099-01-01T00:00:00.5+02:00"},
    {"text": "x", "send_at": "2099-01-01T00:00:00Z", "expires_at": "2099-01-02T03:04:05.000001Z"},
    {
        "text": "numbers",
        "metadata": {
            "floats": [0.1, 1e16, 1.5e-7, -0.0, 1e300, 5e-324, 100.0, 123456789.123456789],
            "ints": [2**63 - 1, -(2**63), 0],
            "nested": {"a": [{"b": [None, True, False, {}]}], "c": []},
            "escapes": '\u0001\u007f\n\r"\\/',
        },
    },
    {"recipient": {"email": "ops@example.com", "phone": "+1 (415) 555-0100"}, "text": "x"},
    {"recipient": {"telegram_chat_id": "-1001234"}, "text": "x"},
    {"recipient": {"email": ["a@example.com", "b@example.com"]}, "text": "an email list"},
    {"recipient": {"webhook_url": "https://hooks.example.com/x?y=1"}, "text": "a url"},
    {"recipient": {"quiet_hours": NIGHT}, "text": "a recipient's quiet hours"},
    {"text": "x", "callback_url": "https://cb.example.com/h", "callback_events": ["*.failed"]},
    {"text": "x", "callback_url": "https://cb.example.com/h"},
    {"template": "greeting", "data": {"name": "Ada"}},
    {"template": "disk", "data": {"host": "db-1", "pct": 93}},
    {"route": "daily", "text": "a digest's", "recipient": {"email": "d@example.com"}},
    {"route": "once", "text": "deduplicated", "dedup_key": "disk:db-1"},
]


@pytest.mark.parametrize("body", BODIES, ids=lambda body: json.dumps(body)[:40])
@pytest.mark.parametrize("owner", [None, "backend"])
def test_a_new_rows_body_is_the_models(body: dict[str, Any], owner: str | None) -> None:
    request = NotificationCreate.model_validate(body)
    route = service.resolve_route(CONFIG, request, ("body",))
    now = datetime(2026, 12, 4, 20, 5, 42, 393248, tzinfo=UTC)
    row = service.new_notification(request, route, now=now, owner=owner, templates=CONFIG.templates)
    expected = NotificationDetail.model_validate(row).model_dump_json().encode()
    assert new_detail_json(row) == expected


def test_a_new_rows_body_at_a_whole_second() -> None:
    request = NotificationCreate.model_validate({"text": "x"})
    route = service.resolve_route(CONFIG, request, ("body",))
    row = service.new_notification(
        request, route, now=datetime(2026, 12, 4, tzinfo=UTC), owner=None
    )
    assert b'"created_at":"2026-12-04T00:00:00Z"' in new_detail_json(row)
    assert new_detail_json(row) == NotificationDetail.model_validate(row).model_dump_json().encode()

"""Reading Telegram updates and commands, and /status's answer: no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.channels.telegram import ack_callback_data, acked_by_callback
from app.domain import InboundKind
from app.inbound.commands import Command, parse_command, status_text
from app.inbound.updates import MAX_TEXT, Update, parse_update, update_id_of


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/status 0192", Command("status", ("0192",))),
        ("/STATUS@Herald_Bot  0192 ", Command("status", ("0192",))),
        ("/mute alerts 1h", Command("mute", ("alerts", "1h"))),
        ("/help", Command("help", ())),
        ("/status@other_bot 0192", None),
        ("status 0192", None),
        ("", None),
        (None, None),
        ("/x " + "a " * 100, Command("x", ("a",) * 5)),
    ],
)
def test_parse_command(text: str | None, command: Command | None) -> None:
    assert parse_command(text, "herald_bot") == command


def test_ack_callback_data_fits_telegram_and_reads_back() -> None:
    notification_id = uuid.uuid4()
    data = ack_callback_data(notification_id)
    assert data.startswith("ack:") and len(data.encode()) <= 64
    assert acked_by_callback(data) == notification_id
    assert acked_by_callback("ack:nope") is None and acked_by_callback(str(notification_id)) is None


def test_a_message_update() -> None:
    raw: dict[str, Any] = {
        "update_id": 7,
        "message": {
            "message_id": 3,
            "from": {"id": 42, "is_bot": False, "first_name": "Al", "username": "alice"},
            "chat": {"id": -100123, "type": "supergroup"},
            "date": 1767225600,
            "text": "x" * (MAX_TEXT + 10),
        },
    }
    update = parse_update(raw, 7)
    assert update.kind is InboundKind.MESSAGE
    assert (update.chat_id, update.message_id, update.sender_id) == ("-100123", 3, "42")
    assert update.sender_name == "@alice"
    assert update.sent_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert update.text is not None and len(update.text) == MAX_TEXT


def test_a_button_press_update() -> None:
    raw = {
        "update_id": 8,
        "callback_query": {
            "id": "4382bfdwdsb323b2d9",
            "from": {"id": 42, "first_name": "Al"},
            "message": {"message_id": 5, "chat": {"id": 99}},
            "data": "ack:x",
        },
    }
    assert parse_update(raw, 8) == Update(
        update_id=8,
        kind=InboundKind.CALLBACK_QUERY,
        chat_id="99",
        message_id=5,
        sender_id="42",
        sender_name="Al",
        text="ack:x",
        callback_query_id="4382bfdwdsb323b2d9",
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"update_id": 9, "edited_message": {"chat": {"id": 1}}},
        {"update_id": 9, "message": {"text": "no chat"}},
        {"update_id": 9, "callback_query": {"data": "no id"}},
    ],
)
def test_other_updates(raw: dict[str, Any]) -> None:
    assert parse_update(raw, 9) == Update(update_id=9, kind=InboundKind.OTHER)


@pytest.mark.parametrize(
    ("raw", "update_id"),
    [({"update_id": 5}, 5), ({"update_id": "5"}, None), ({"update_id": True}, None), ([], None)],
)
def test_update_ids(raw: object, update_id: int | None) -> None:
    assert update_id_of(raw) == update_id


def test_status_text_of_a_broadcast_with_a_failed_hop() -> None:
    notification: Any = {
        "id": "0192",
        "status": "partial",
        "route": None,
        "delivered_via": ["email", "hook"],
        "hops": [
            {"channel": "email", "state": "delivered", "attempts": 1, "last_error": None},
            {"channel": "hook", "state": "delivered", "attempts": 2, "last_error": {"code": "x"}},
            {
                "channel": "sms",
                "state": "failed",
                "attempts": 3,
                "last_error": {"code": "http_503"},
            },
        ],
    }
    assert status_text(notification) == (
        "0192: partial via email, hook (inline chain)\n"
        "hops: email delivered, hook delivered, sms failed (http_503)"
    )

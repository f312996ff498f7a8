"""Telegram ``Update`` objects as Herald reads them (https://core.telegram.org/bots/api#update).

An update has an ``update_id`` and at most one of its optional parts; Herald asks for two
(``allowed_updates``): ``message`` (``{message_id, from?, chat: {id, type}, date, text?}``) and
``callback_query`` (``{id, from, message?: {chat: {id}}, data?}``, a press on an inline-keyboard
button). Anything else, or a part missing what Herald needs, reads as ``other``. Each text is
cut to what Telegram itself allows, so one update stores a bounded row whatever it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.channels.text import clip
from app.domain import InboundKind

ALLOWED_UPDATES = (InboundKind.MESSAGE.value, InboundKind.CALLBACK_QUERY.value)
MAX_TEXT = 4096
"""Telegram's longest message text; a button's data is at most 64 bytes."""
MAX_NAME = 128


@dataclass(frozen=True, slots=True)
class Update:
    update_id: int
    kind: InboundKind
    chat_id: str | None = None
    """The chat it came from (for a button press: the chat of the message the button is on)."""
    message_id: int | None = None
    sender_id: str | None = None
    sender_name: str | None = None
    text: str | None = None
    """The message's text, or the button's data."""
    sent_at: datetime | None = None
    callback_query_id: str | None = None


def update_id_of(raw: object) -> int | None:
    """An update's ``update_id`` (``None``: not an update)."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("update_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_update(raw: dict[str, Any], update_id: int) -> Update:
    message = raw.get("message")
    if isinstance(message, dict) and _chat_id(message) is not None:
        sender_id, sender_name = _sender(message.get("from"))
        return Update(
            update_id=update_id,
            kind=InboundKind.MESSAGE,
            chat_id=_chat_id(message),
            message_id=_int(message.get("message_id")),
            text=_text(message.get("text"), MAX_TEXT),
            sent_at=_time(message.get("date")),
            sender_id=sender_id,
            sender_name=sender_name,
        )
    query = raw.get("callback_query")
    if isinstance(query, dict) and isinstance(query.get("id"), str):
        on = query.get("message")
        sender_id, sender_name = _sender(query.get("from"))
        return Update(
            update_id=update_id,
            kind=InboundKind.CALLBACK_QUERY,
            chat_id=_chat_id(on) if isinstance(on, dict) else None,
            message_id=_int(on.get("message_id")) if isinstance(on, dict) else None,
            text=_text(query.get("data"), MAX_TEXT),
            callback_query_id=clip(query["id"], MAX_NAME),
            sender_id=sender_id,
            sender_name=sender_name,
        )
    return Update(update_id=update_id, kind=InboundKind.OTHER)


def _chat_id(message: dict[str, Any]) -> str | None:
    chat = message.get("chat")
    chat_id = _int(chat.get("id")) if isinstance(chat, dict) else None
    return None if chat_id is None else str(chat_id)


def _sender(user: object) -> tuple[str | None, str | None]:
    """Who sent it: the user's id, and ``@username`` (else the first name)."""
    if not isinstance(user, dict):
        return None, None
    user_id = _int(user.get("id"))
    username, first_name = user.get("username"), user.get("first_name")
    name = (
        f"@{username}"
        if isinstance(username, str) and username
        else first_name
        if isinstance(first_name, str)
        else None
    )
    return None if user_id is None else str(user_id), _text(name, MAX_NAME)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object, limit: int) -> str | None:
    return clip(value, limit) if isinstance(value, str) else None


def _time(value: object) -> datetime | None:
    seconds = _int(value)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None

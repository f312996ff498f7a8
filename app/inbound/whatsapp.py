"""WhatsApp Cloud API webhooks: the verification handshake, the signature, the statuses.

Meta verifies a callback URL with a GET (``hub.mode=subscribe``, ``hub.verify_token``,
``hub.challenge``): the endpoint answers the challenge when the token is the one configured.
Every POST is signed in ``X-Hub-Signature-256``: ``sha256=`` and the hex HMAC-SHA256 of the raw
body, keyed with the app secret. A body is ``{"object": "whatsapp_business_account",
"entry": [{"changes": [{"field": "messages", "value": {"statuses": [{"id": "wamid…",
"status": "delivered", "timestamp": "1700000000", "recipient_id": …, "errors": [{"code":
131026, …}]}]}}]}]}``; inbound messages (``value.messages``) are not receipts and are left alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain import Receipt, ReceiptStatus

SIGNATURE_HEADER = "x-hub-signature-256"
SIGNATURE_PREFIX = "sha256="

STATUSES = {
    "sent": ReceiptStatus.SENT,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "failed": ReceiptStatus.FAILED,
}
"""WhatsApp's status values, in Herald's words (others, ``deleted``, ``warning``, are ignored)."""

MAX_AGE = timedelta(days=7)
"""A status older than this is stale: Meta retries a webhook for at most about a week, so an
older one is a replay."""
MAX_STATUSES = 1000
"""Statuses one request may carry; past that the rest are ignored."""


def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` Meta sends with ``body``."""
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signed(app_secret: str, body: bytes, given: str) -> bool:
    """Whether ``given`` is Meta's signature of ``body`` (compared in constant time)."""
    expected = signature(app_secret, body)
    return hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "replace"))


def statuses(payload: Any) -> Iterator[dict[str, Any]]:
    """Every ``statuses`` item of a webhook body, at most ``MAX_STATUSES``."""
    count = 0
    for entry in _items(payload, "entry"):
        for change in _items(entry, "changes"):
            value = change.get("value")
            for status in _items(value, "statuses"):
                if count >= MAX_STATUSES:
                    return
                count += 1
                yield status


def _items(container: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(container, dict):
        return []
    found = container.get(key)
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def receipt(channel: str, status: dict[str, Any], now: datetime) -> Receipt | str:
    """The receipt a ``statuses`` item carries, or why none: ``ignored`` (no id, a status
    Herald does not track, no valid timestamp) or ``stale`` (older than ``MAX_AGE``)."""
    message_id = status.get("id")
    kind = STATUSES.get(str(status.get("status", "")).lower())
    if not isinstance(message_id, str) or not message_id or kind is None:
        return "ignored"
    try:
        at = datetime.fromtimestamp(int(str(status.get("timestamp"))), UTC)
    except (ValueError, OverflowError, OSError):
        return "ignored"
    if at < now - MAX_AGE:
        return "stale"
    code = None
    errors = _items(status, "errors")
    if errors and errors[0].get("code") is not None:
        code = str(errors[0]["code"])[:64]
    return Receipt(channel, "whatsapp", message_id[:255], kind, min(at, now), code)

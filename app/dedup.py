"""Dedup windows and digests: the noise a route can take out of what it delivers.

``dedup``: a request's ``dedup_key`` names what a notification is about. Within the route's
``window`` (counted from the notification the key made), a repeat by the same API key is either
dropped (nothing stored; the answer is the key's notification) or collapsed into it while it is
still pending (its ``occurrences`` counts the repeats, its subject and bodies become the
latest's, and it is sent once, its subject and bodies ending in `` (xN)`` with a
multiplication sign, ``TIMES``). The window and its notification are a
``dedup_windows`` row per API key, route and key (``app.store.dedup``).

``digest``: a route's notifications for one recipient are held (``next_attempt_at`` at the
end of their window, as quiet hours hold), and the first of a group to come due is sent as one
message listing every pending notification of the group, at most ``max_items``; each keeps its
own id, state and attempts, which name the digest's send by its ``digest_id``. The group is
sent at once when it reaches ``max_items``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.channels.base import Message, Recipient
from app.domain import DedupMode, Severity
from app.durations import Duration

WEEK = 7 * 86400.0
TIMES = "\N{MULTIPLICATION SIGN}"
DIGEST_ITEM_LIMIT = 200
"""Characters of each notification a digest's text lists (its subject and text, cut)."""
DIGEST_ITEMS_LIMIT = 200
"""Most notifications one digest may list (``max_items``' ceiling): with
``DIGEST_ITEM_LIMIT`` this keeps a digest's text well under the 64 KiB a body may be."""
DIGEST_METADATA = "herald:digest"
"""The key of a digest message's metadata: its id, count and notification ids."""


class DedupConfig(BaseModel):
    """A route's ``dedup``: a repeat of a request's ``dedup_key`` within ``window`` of the
    notification the key made is dropped or collapsed into it."""

    model_config = ConfigDict(extra="forbid")

    window: Duration = Field(gt=0, le=WEEK)
    mode: DedupMode = DedupMode.DROP


class DigestConfig(BaseModel):
    """A route's ``digest``: its notifications for one recipient are held up to ``window`` and
    sent as one message listing them, or as soon as ``max_items`` are waiting."""

    model_config = ConfigDict(extra="forbid")

    window: Duration = Field(gt=0, le=WEEK)
    max_items: int = Field(default=50, ge=2, le=DIGEST_ITEMS_LIMIT)


def times(occurrences: int) -> str:
    """`` (xN)`` (``TIMES``, the multiplication sign) for a notification that stands for ``N``
    requests; nothing for one."""
    return f" ({TIMES}{occurrences})" if occurrences > 1 else ""


def marked(value: str | None, occurrences: int) -> str | None:
    """``value`` with the ``times`` mark of a collapsed notification (``None`` stays
    ``None``)."""
    return None if value is None else value + times(occurrences)


MARKED_FIELDS = ("subject", "text", "html")
"""What the mark goes on, in a message and in each of its template's overrides."""


def marked_overrides(
    overrides: Mapping[str, Mapping[str, Any]], occurrences: int
) -> Mapping[str, Mapping[str, Any]]:
    """A template's overrides with the ``times`` mark on their subject, text and html (the
    rest, such as Slack blocks or a WhatsApp template, as they are)."""
    if occurrences <= 1:
        return overrides
    return {
        channel_type: {
            name: marked(value, occurrences) if name in MARKED_FIELDS else value
            for name, value in override.items()
        }
        for channel_type, override in overrides.items()
    }


def digest_key(owner: str | None, route: str, recipient: Mapping[str, Any]) -> str:
    """The digest group of a notification: its API key, route and recipient (so its chain of
    channels and their addresses), as a fixed-length hash."""
    canonical = json.dumps([owner, route, recipient], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _cut(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def digest_line(subject: str | None, text: str | None, occurrences: int) -> str:
    """One notification as a digest lists it: ``subject: text``, cut to a line, with its
    ``times`` mark."""
    parts = [part for part in (subject, text) if part]
    body = ": ".join(parts) if parts else "(no text)"
    return "- " + _cut(body, DIGEST_ITEM_LIMIT) + times(occurrences)


def digest_message(
    digest_id: uuid.UUID,
    route: str | None,
    recipient: Recipient,
    items: Sequence[tuple[uuid.UUID, str | None, str | None, str, int]],
    created_at: datetime,
) -> Message:
    """The one message of a digest: ``items`` are each notification's id, subject, text (or
    its HTML as text), severity and occurrences, oldest first. The subject counts them, the
    text lists them a line each, the severity is the most severe of theirs, and the metadata
    (``herald:digest``) names the digest and every notification in it."""
    order = list(Severity)
    severity = max((Severity(item[3]) for item in items), key=order.index)
    count = len(items)
    subject = f"{count} notifications" + (f" ({route})" if route else "")
    text = "\n".join(digest_line(item[1], item[2], item[4]) for item in items)
    return Message(
        id=digest_id,
        route=route,
        recipient=recipient,
        subject=subject,
        text=text,
        html=None,
        severity=severity,
        source=None,
        metadata={
            DIGEST_METADATA: {
                "id": str(digest_id),
                "count": count,
                "notifications": [str(item[0]) for item in items],
            }
        },
        created_at=created_at,
    )

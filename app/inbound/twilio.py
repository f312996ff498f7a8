"""Twilio's message status callbacks: how they are signed, and what they say.

Twilio POSTs a form (``MessageSid``, ``MessageStatus``, ``ErrorCode`` when it failed, and more)
to the ``StatusCallback`` URL a send named, signed in ``X-Twilio-Signature``: the base64
HMAC-SHA1, keyed with the account's auth token, of the full URL followed by every POST
parameter, sorted by name, as name and value with no separator. A status callback carries no
time of its own: a receipt's time is when Herald received it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

from app.domain import Receipt, ReceiptStatus

SIGNATURE_HEADER = "x-twilio-signature"

STATUSES = {
    "accepted": ReceiptStatus.QUEUED,
    "scheduled": ReceiptStatus.QUEUED,
    "queued": ReceiptStatus.QUEUED,
    "sending": ReceiptStatus.QUEUED,
    "sent": ReceiptStatus.SENT,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "undelivered": ReceiptStatus.UNDELIVERED,
    "failed": ReceiptStatus.FAILED,
    "canceled": ReceiptStatus.FAILED,
}
"""Twilio's ``MessageStatus`` values, in Herald's words (others are ignored)."""


def signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a POST of ``params`` to ``url``."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signed(auth_token: str, url: str, params: Sequence[tuple[str, str]], given: str) -> bool:
    """Whether ``given`` is Twilio's signature of the request (compared in constant time)."""
    expected = signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def receipt(
    channel: str, params: Sequence[tuple[str, str]], received_at: datetime
) -> Receipt | None:
    """The receipt a status callback carries (``None``: no message id, or a status Herald
    does not track)."""
    form = dict(params)
    message_id = form.get("MessageSid") or form.get("SmsSid")
    status = STATUSES.get((form.get("MessageStatus") or form.get("SmsStatus") or "").lower())
    if not message_id or status is None:
        return None
    code = form.get("ErrorCode") or None
    return Receipt(channel, "twilio", message_id[:255], status, received_at, code and code[:64])

"""Signed, expiring acknowledgement links (the email's link, ntfy's action button).

A link names the notification, the channel that carried it and when it stops being valid, and
carries an HMAC-SHA256 of the three keyed with ``server.secret``:
``{public_url}/v1/ack?n=<id>&c=<channel>&e=<unix seconds>&s=<base64url signature>``. Nothing
else is needed to acknowledge: the signature is the credential, so a forged or altered link is
refused, and an expired one too. Following the link (GET) only shows a page with a button;
acknowledging takes a POST, so a mail scanner that opens every link acknowledges nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

ACK_PATH = "/v1/ack"


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a valid link says: acknowledge ``notification_id``, carried by ``channel``."""

    notification_id: uuid.UUID
    channel: str


class AckLinks:
    def __init__(
        self,
        public_url: str,
        secret: str,
        ttl: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.public_url = public_url
        self._key = secret.encode("utf-8")
        self.ttl = ttl
        self.clock = clock

    def url(self, notification_id: uuid.UUID, channel: str) -> str:
        """A link acknowledging ``notification_id``, valid for ``ttl`` from now."""
        expires = int((self.clock() + timedelta(seconds=self.ttl)).timestamp())
        query = {
            "n": str(notification_id),
            "c": channel,
            "e": str(expires),
            "s": self._sign(str(notification_id), channel, str(expires)),
        }
        return f"{self.public_url}{ACK_PATH}?{urlencode(query)}"

    def verify(self, n: str, c: str, e: str, s: str) -> LinkClaim | None:
        """The claim of a link's parameters, or ``None`` when the signature is wrong (compared
        in constant time), the link has expired or a part is malformed."""
        expected = self._sign(n, c, e)
        if not hmac.compare_digest(expected.encode(), s.encode("utf-8", "replace")):
            return None
        try:
            notification_id = uuid.UUID(n)
            expires = int(e)
        except ValueError:
            return None
        if expires < self.clock().timestamp():
            return None
        return LinkClaim(notification_id, c)

    def _sign(self, n: str, c: str, e: str) -> str:
        message = f"{n}\n{c}\n{e}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

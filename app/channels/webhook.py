"""``webhook``: POST the notification as JSON, signed by the Standard Webhooks scheme.

``webhook-id`` is the notification id on every try, so a receiver can drop the duplicates that
at-least-once delivery may bring. Redirects are never followed: a 3xx is a ``permanent`` failure.

Without ``url`` the channel is recipient-addressed: each notification's ``recipient.webhook_url``
chooses the host, so the orchestrator keeps a circuit per destination (``destination``), never
one for the whole channel that a single caller's endpoint could open for everyone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field, SecretStr, field_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    Message,
    check_http_url,
    origin,
)
from app.channels.http_errors import post_and_classify


class WebhookConfig(ChannelConfig):
    type: Literal["webhook"]
    url: str | None = None
    """Where to POST; none: the notification's ``recipient.webhook_url``."""
    secret: SecretStr | None = None
    """``whsec_<base64>``; none: requests go unsigned."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Extra request headers; their values are treated as secrets (masked, redacted)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_http_url(value)
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())
        return value


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (its base64 part, decoded)."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("secret must be whsec_ followed by base64")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one request."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one request (unsigned when there is no key)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        headers["webhook-signature"] = sign(key, msg_id, timestamp, body)
    return headers


def json_body(value: Any) -> bytes:
    """A webhook's body: compact JSON in UTF-8, by orjson (bench/results/levers.md, "webhook
    bodies by orjson"); ``json`` writes what orjson refuses (an integer past 64 bits, from a
    row stored before metadata was bounded)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def payload(message: Message, timestamp: int) -> dict[str, Any]:
    return {
        "type": "notification",
        "timestamp": timestamp,
        "data": {
            "id": str(message.id),
            "route": message.route,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "severity": message.severity,
            "source": message.source,
            "metadata": dict(message.metadata),
            "recipient": message.recipient.model_dump(exclude_none=True),
        },
    }


class WebhookChannel(ChannelType):
    type_name = "webhook"
    config_model = WebhookConfig
    config: WebhookConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        secret = self.config.secret
        self._key = secret_key(secret.get_secret_value()) if secret else None
        # Parsed once: httpx parses a string URL again on every request.
        self._url = httpx.URL(self.config.url) if self.config.url else None

    @property
    def recipient_addressed(self) -> bool:
        return self._url is None

    def destination(self, message: Message) -> str | None:
        url = message.recipient.webhook_url
        return origin(url) if self._url is None and url else None

    async def send(self, message: Message) -> DeliveryResult:
        url = self._url or message.recipient.webhook_url
        if not url:
            return DeliveryResult.skipped("no_address", "recipient has no webhook_url")
        timestamp = int(time.time())
        body = json_body(payload(message, timestamp))
        headers = {
            **{name: value.get_secret_value() for name, value in self.config.headers.items()},
            "content-type": "application/json",
            **signed_headers(self._key, str(message.id), timestamp, body),
        }
        return await post_and_classify(
            self.context.http,
            url,
            message_id=lambda response: response.headers.get("x-message-id"),
            content=body,
            headers=headers,
            timeout=self.config.timeout,
        )

"""``ntfy``: publish the notification to an ntfy topic (ntfy.sh or a self-hosted server).

Uses ntfy's JSON publishing (https://docs.ntfy.sh/publish/#publish-as-json): one ``POST`` of a
JSON object to the server's root URL, ``{api_base}/``. Unlike the header form it carries UTF-8
titles and tags as they are. ntfy answers 200 with the stored message
(``{"id", "time", "event": "message", "topic", …}``); its ``id`` is the provider message id.

What the notification becomes:

- ``title``: the subject, cut to 1,024 UTF-8 bytes (ntfy refuses longer titles with 400).
- ``message``: ``text``, or ``html`` turned into plain text. ntfy keeps at most 4,096 bytes in a
  message and turns a longer one into an attachment file nobody reads on a phone, so a longer
  body is cut to 4,096 UTF-8 bytes, the last character an ellipsis ``…``.
- ``priority`` from the severity: debug 1 (min), info 3 (default), warning 4 (high),
  error 4 (high), critical 5 (max, "urgent").
- ``tags``: a severity emoji short code first (ntfy shows emoji tags before the title): debug
  ``bug``, info ``information_source``, warning ``warning``, error ``x``, critical
  ``rotating_light``; then the configured ``tags``.

Acknowledgements: when the route waits for one (``Message.acks``) and acknowledgement links are
configured (``server.public_url`` and ``server.secret``), the message carries an ``http`` action
button, "Acknowledge", that POSTs to a signed link (``app.security.links``) and clears the
notification on the phone.

Errors: ntfy answers with ``{"code": 40301, "http": 403, "error": "forbidden", "link": …}``
(server/errors.go). The class follows the HTTP status as for every channel (401/403 ``config``,
429 ``rate_limited`` with ``Retry-After`` when sent, 400/404/413 ``permanent``, 5xx and 507
``transient``), except that a refused topic name (40009 invalid, 40010 not allowed) is
``config``: the topic is the channel's own setting, so every message would fail alike. The code is
``ntfy_<ntfy's code>`` (``ntfy_40301``, ``ntfy_42901``) when the body carries one, else
``http_<status>``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal

import httpx
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    api_base_setting,
)
from app.channels.http_errors import (
    answer_failure,
    classify_status,
    json_int,
    json_object,
    post_and_classify,
)
from app.channels.text import Unit, clip

TOPIC_PATTERN = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
"""ntfy's own topic rule (server/server.go ``topicRegex``)."""

MESSAGE_LIMIT = 4096
"""Bytes ntfy keeps in a message before turning it into an attachment (``message-size-limit``)."""
TITLE_LIMIT = 1024
"""Bytes ntfy accepts in a title."""
TAGS_LIMIT = 512
"""Bytes ntfy accepts in all tags together, joined by commas."""
ERROR_LIMIT = 300
"""How much of ntfy's ``error`` text goes into an attempt's message."""

PRIORITIES = {"debug": 1, "info": 3, "warning": 4, "error": 4, "critical": 5}
SEVERITY_TAGS = {
    "debug": "bug",
    "info": "information_source",
    "warning": "warning",
    "error": "x",
    "critical": "rotating_light",
}
_LONGEST_SEVERITY_TAG = max(len(tag) for tag in SEVERITY_TAGS.values())

CONFIG_CODES = frozenset({40009, 40010})
"""ntfy codes that say the configured topic itself is refused."""


class NtfyConfig(ChannelConfig):
    # A refused value may be a secret: keep inputs out of ValidationError's text.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["ntfy"]
    topic: str
    """The topic to publish to: letters, digits, ``_`` and ``-``, at most 64."""
    api_base: str = "https://ntfy.sh"
    """The ntfy server; a self-hosted one is its base URL (with any path prefix)."""
    token: SecretStr | None = None
    """An access token (``tk_…``), sent as ``Authorization: Bearer``."""
    username: str | None = None
    password: SecretStr | None = None
    """With ``username``: HTTP Basic auth. Not together with ``token``."""
    tags: list[str] = Field(default_factory=list)
    """Extra tags on every message (emoji short codes show as emojis)."""
    click: str | None = None
    """A URL the phone opens when the notification is tapped."""

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not TOPIC_PATTERN.match(value):
            raise ValueError("topic must be 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        return api_base_setting(value)

    @field_validator("click")
    @classmethod
    def _click(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("click must start with http:// or https://")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag.strip() or "," in tag:
                raise ValueError("each tag must be non-empty and contain no comma")
        joined = len(",".join(value).encode()) + (1 if value else 0) + _LONGEST_SEVERITY_TAG
        if joined > TAGS_LIMIT:
            raise ValueError(
                f"tags are too long: ntfy accepts {TAGS_LIMIT} bytes of tags in all, "
                f"and Herald adds a severity tag of up to {_LONGEST_SEVERITY_TAG}"
            )
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> NtfyConfig:
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("give either token or username and password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.token is not None and not self.token.get_secret_value():
            raise ValueError("token must not be empty")
        return self


ACK_LABEL = "Acknowledge"


def payload(config: NtfyConfig, message: Message, ack_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "topic": config.topic,
        "message": clip(message.plain_text(), MESSAGE_LIMIT, Unit.UTF8),
        "priority": PRIORITIES.get(message.severity, 3),
        "tags": [SEVERITY_TAGS.get(message.severity, "information_source"), *config.tags],
    }
    if message.subject:
        body["title"] = clip(message.subject, TITLE_LIMIT, Unit.UTF8)
    if config.click:
        body["click"] = config.click
    if ack_url is not None:
        body["actions"] = [
            {"action": "http", "label": ACK_LABEL, "url": ack_url, "method": "POST", "clear": True}
        ]
    return body


def failure(response: httpx.Response) -> DeliveryResult:
    """A failed result for a non-2xx answer, read from ntfy's error body when there is one."""
    status = response.status_code
    error_class = classify_status(status) or ErrorClass.PERMANENT
    body = json_object(response) or {}
    ntfy_code = json_int(body.get("code"))
    text = body.get("error")
    if ntfy_code is not None:
        code = f"ntfy_{ntfy_code}"
        if ntfy_code in CONFIG_CODES:
            error_class = ErrorClass.CONFIG
    else:
        code = f"http_{status}"
    message = f"ntfy answered HTTP {status}"
    if isinstance(text, str) and text:
        message += f": {clip(text, ERROR_LIMIT)}"
    elif response.reason_phrase:
        message += f" {response.reason_phrase}"
    if 300 <= status < 400 and response.headers.get("location"):
        message += f" (redirect to {response.headers['location']!r} not followed)"
    return answer_failure(response, error_class, code, message)


def message_id(response: httpx.Response) -> str | None:
    """The ``id`` of the message ntfy stored, when it answered with one."""
    found = (json_object(response) or {}).get("id")
    return found if isinstance(found, str) and found else None


class NtfyChannel(ChannelType):
    type_name = "ntfy"
    config_model = NtfyConfig
    config: NtfyConfig

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.config.token is not None:
            headers["authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        elif self.config.username is not None and self.config.password is not None:
            pair = f"{self.config.username}:{self.config.password.get_secret_value()}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return headers

    async def send(self, message: Message) -> DeliveryResult:
        links = self.context.links
        ack_url = links.url(message.id, self.name) if message.acks and links else None
        body = json.dumps(payload(self.config, message, ack_url), ensure_ascii=False).encode()
        return await post_and_classify(
            self.context.http,
            f"{self.config.api_base}/",
            failure=failure,
            message_id=message_id,
            content=body,
            headers=self._headers(),
            timeout=self.config.timeout,
        )

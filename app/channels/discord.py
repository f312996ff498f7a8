"""``discord``: post the notification through a Discord webhook ("Execute Webhook").

``POST {webhook_url}?wait=true`` with ``{"content", "username"?, "avatar_url"?,
"allowed_mentions": {"parse": []}}``: nobody is pinged, whatever the text says. ``wait=true``
makes Discord answer ``200`` with the created message object, whose ``id`` is recorded as the
provider message id. A ``thread_id`` already in the configured URL's query string is kept.

``webhook_url`` is the whole secret (its last path segment is the webhook token). It is used as
configured; ``api_base`` (default: unset) replaces its scheme and host, so
``api_base: http://127.0.0.1:8080`` sends to ``http://127.0.0.1:8080/api/webhooks/<id>/<token>``
(a proxy, or a test server). Tests may just as well configure a local ``webhook_url``.

The content is the subject in bold (``**subject**``, whitespace collapsed) on the first line, then
the text (the HTML with its tags stripped when only HTML was given). Discord refuses ``content``
over 2,000 characters, so longer content is **split** on line boundaries (``split_text``) and the
parts are posted in order, each waiting for the previous one (``send_in_parts``); the delivery
succeeds only if all of them do, and records every part's message id, joined by commas. At most
``max_messages`` parts (default 5, one webhook rate-limit window) are posted: past that the last
part ends with ``…`` and the rest is dropped. When a later part is rate-limited, the channel waits
the ``retry_after`` Discord asked for if it fits in the channel's ``timeout``; otherwise the
delivery fails ``rate_limited`` and a later round posts every part again (at-least-once: the parts
already posted then appear twice).

How answers map to the error classes (the code is ``discord_<JSON error code>`` when Discord
sent a non-zero one, else ``http_<status>``):

==========================================================  ================  ==================
Discord answer                                              class             code
==========================================================  ================  ==================
200 + message object                                        (delivered)       --
429 ``{"retry_after": 1.234, "global": ...}``               ``rate_limited``  ``http_429``
(``retry_after`` from the body, else ``Retry-After``)
401 (``50027`` Invalid Webhook Token, ``0`` Unauthorized)   ``config``        by code / status
403 (``50013`` Missing Permissions ...)                     ``config``        by code / status
404 (``10015`` Unknown Webhook: it was deleted)             ``config``        ``discord_10015``
400 (``50006`` empty message, ``50035`` invalid form body)  ``permanent``     ``discord_<code>``
other 4xx, 3xx (redirects are never followed)               ``permanent``     by code / status
5xx                                                         ``transient``     ``http_<status>``
==========================================================  ================  ==================

Every 404 is ``config``: the URL is the channel's own setting, not the recipient's, so a missing
webhook breaks every delivery through the channel until someone fixes it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    api_base_setting,
    check_http_setting,
)
from app.channels.http_errors import classify_status, json_object, post_once, retry_after_seconds
from app.channels.text import clip, cut_short, send_in_parts, split_text

CONTENT_LIMIT = 2000
"""Discord's limit on ``content``, in characters."""

DETAIL_LIMIT = 200
"""How much of Discord's error ``message`` goes into an attempt's message."""

RATE_LIMIT_WAITS = 3
"""How many times one part may wait out a 429 before the delivery gives up."""


def compose(message: Message) -> str:
    lines = []
    subject = " ".join((message.subject or "").split())
    if subject:
        lines.append(f"**{subject}**")
    body = message.plain_text().strip()
    if body:
        lines.append(body)
    return "\n".join(lines)


def parts_of(content: str, max_messages: int) -> list[str]:
    """``content`` in at most ``max_messages`` parts of at most ``CONTENT_LIMIT`` characters."""
    parts = split_text(content, CONTENT_LIMIT)
    if len(parts) > max_messages:
        parts = parts[:max_messages]
        parts[-1] = cut_short(parts[-1], CONTENT_LIMIT)
    return parts


class DiscordConfig(ChannelConfig):
    type: Literal["discord"]
    webhook_url: SecretStr
    """``https://discord.com/api/webhooks/<id>/<token>``; the whole URL is secret."""
    username: str | None = Field(default=None, min_length=1, max_length=80)
    """Overrides the webhook's display name."""
    avatar_url: str | None = Field(default=None, max_length=2048)
    """Overrides the webhook's avatar."""
    max_messages: int = Field(default=5, ge=1, le=20)
    """Long content is split into at most this many messages; the rest is cut."""
    api_base: str | None = None
    """Replaces the scheme and host of ``webhook_url`` (a proxy, a test server)."""

    @field_validator("webhook_url")
    @classmethod
    def _valid_webhook_url(cls, value: SecretStr) -> SecretStr:
        return SecretStr(check_http_setting(value.get_secret_value(), "webhook_url"))

    @field_validator("avatar_url")
    @classmethod
    def _valid_avatar_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_setting(value, "avatar_url")

    @field_validator("api_base")
    @classmethod
    def _valid_api_base(cls, value: str | None) -> str | None:
        return None if value is None else api_base_setting(value)

    def target(self) -> httpx.URL:
        """Where to POST: ``webhook_url`` (host replaced by ``api_base``) with ``wait=true``."""
        url = httpx.URL(self.webhook_url.get_secret_value())
        if self.api_base is not None:
            url = httpx.URL(self.api_base + url.raw_path.decode("ascii"))
        return url.copy_merge_params({"wait": "true"})

    def secrets(self) -> list[str]:
        found = super().secrets()
        url = httpx.URL(self.webhook_url.get_secret_value())
        found.extend(s for s in (str(self.target()), url.path) if s and s != "/")
        token = url.path.rstrip("/").rsplit("/", 1)[-1]
        if len(token) >= 8:
            found.append(token)
        return found


class DiscordChannel(ChannelType):
    type_name = "discord"
    config_model = DiscordConfig
    config: DiscordConfig

    async def send(self, message: Message) -> DeliveryResult:
        deadline = self.context.clock.monotonic() + self.config.timeout
        url = self.config.target()
        parts = parts_of(compose(message), self.config.max_messages)
        return await send_in_parts(
            parts,
            lambda number, part: self._post_part(url, part, deadline, may_wait=number > 1),
        )

    async def _post_part(
        self, url: httpx.URL, content: str, deadline: float, *, may_wait: bool
    ) -> DeliveryResult:
        payload: dict[str, Any] = {"content": content}
        if self.config.username is not None:
            payload["username"] = self.config.username
        if self.config.avatar_url is not None:
            payload["avatar_url"] = self.config.avatar_url
        payload["allowed_mentions"] = {"parse": []}
        body = json.dumps(payload, ensure_ascii=False).encode()
        waits = 0
        while True:
            remaining = deadline - self.context.clock.monotonic()
            if remaining <= 0:
                return DeliveryResult.failed(
                    ErrorClass.TRANSIENT,
                    "timeout",
                    f"no time left within {self.config.timeout:g}s",
                )
            response = await post_once(
                self.context.http,
                url,
                content=body,
                headers={"content-type": "application/json"},
                timeout=min(self.config.timeout, remaining),
            )
            if isinstance(response, DeliveryResult):
                return response
            result = _result(response)
            wait = result.retry_after
            if (
                may_wait
                and result.error is not None
                and result.error.cls is ErrorClass.RATE_LIMITED
                and wait is not None
                and waits < RATE_LIMIT_WAITS
                and self.context.clock.monotonic() + wait < deadline - 0.05
            ):
                # Parts before this one are posted already: waiting beats posting them twice.
                waits += 1
                await self.context.clock.sleep(wait)
                continue
            return result


def _result(response: httpx.Response) -> DeliveryResult:
    status = response.status_code
    body = json_object(response) or {}
    if response.is_success:
        message_id = body.get("id")
        return DeliveryResult.ok(
            provider_status=status,
            provider_message_id=str(message_id) if message_id is not None else None,
            response_excerpt=response.text,
        )
    error_class = classify_status(status) or ErrorClass.PERMANENT
    if status == 404:
        error_class = ErrorClass.CONFIG
    code_value = body.get("code")
    discord_code = code_value if isinstance(code_value, int) and code_value > 0 else None
    code = f"discord_{discord_code}" if discord_code is not None and status != 429 else None
    text = body.get("message")
    detail = clip(text.strip(), DETAIL_LIMIT) if isinstance(text, str) and text.strip() else None
    message = f"Discord HTTP {status}" + (f": {detail}" if detail else "")
    if discord_code is not None:
        message += f" (code {discord_code})"
    retry_after = None
    if error_class is ErrorClass.RATE_LIMITED:
        retry_value = body.get("retry_after")
        if isinstance(retry_value, int | float) and not isinstance(retry_value, bool):
            retry_after = max(0.0, float(retry_value))
        else:
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if body.get("global") is True:
            message += " (global rate limit)"
    elif 300 <= status < 400:
        message += " (redirect not followed)"
    return DeliveryResult.failed(
        error_class,
        code or f"http_{status}",
        message,
        provider_status=status,
        response_excerpt=response.text,
        retry_after=retry_after,
    )

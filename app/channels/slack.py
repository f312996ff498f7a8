"""``slack``: post the notification to one Slack channel.

Two modes, chosen by the settings (exactly one must be configured):

* **incoming webhook** (``webhook_url``): ``POST <webhook_url>`` with ``{"text": ...}``. The whole
  URL is the credential. Slack answers in plain text: ``200 ok`` or an error string such as
  ``404 no_service``. There is no message id.
* **bot token** (``token`` + ``channel``): ``POST {api_base}/chat.postMessage`` with
  ``Authorization: Bearer <token>`` and ``{"channel", "text"}``. Slack answers ``200`` with
  ``{"ok": true, "channel": ..., "ts": ...}`` (``ts`` is recorded as the message id) or
  ``{"ok": false, "error": "..."}``, usually with HTTP 200 as well.

The destination comes from the settings, never from the recipient.

The message is Slack ``mrkdwn``: the subject as a bold first line (``*subject*``, its whitespace
collapsed to single spaces), then the text (the HTML with its tags stripped when only HTML was
given; a template's ``slack`` override gives its own ``mrkdwn`` text and Block Kit
``blocks``: ``formatted``). ``&``, ``<`` and ``>`` are escaped as ``&amp;``, ``&lt;`` and
``&gt;`` (Slack's formatting rules), so a notification cannot inject links or ``<!channel>``
pings. Slack truncates ``text`` past 40,000 characters; Herald cuts the escaped text to 39,999
characters plus ``…`` itself, never splitting an entity. Messages between 4,000 (Slack's
recommended size) and 40,000 characters are posted whole; Slack shows them folded.

Errors map to the error classes; the code is ``slack_<error string>`` whenever Slack named the
error, else ``http_<status>``:

===========================================================  ================  ===================
Slack answer                                                 class             code
===========================================================  ================  ===================
``ok: true`` / webhook ``200 ok``                            (delivered)       --
``channel_not_found``, ``not_in_channel``, ``is_archived``,  ``permanent``     ``slack_<error>``
``msg_too_long``, ``no_text``, ``restricted_action*``,
webhook ``invalid_payload`` (400), ``user_not_found``,
``too_many_attachments``, ``channel_is_archived`` (410),
webhook ``channel_not_found`` (404), any unknown error
``invalid_auth``, ``not_authed``, ``token_revoked``,         ``config``        ``slack_<error>``
``token_expired``, ``account_inactive``, ``missing_scope``,
``no_permission``, ``not_allowed_token_type``,
``ekm_access_denied``, ``access_denied``,
webhook ``no_service`` (404: the webhook was revoked),
``no_active_hooks``, ``no_service_id``, ``no_team``,
``team_disabled``, ``invalid_token``, ``action_prohibited``,
``posting_to_general_channel_denied``
``ratelimited``, ``rate_limited``, any HTTP 429              ``rate_limited``  ``slack_<error>``
(``retry_after`` from the ``Retry-After`` header)                              or ``http_429``
``fatal_error``, ``internal_error``, ``service_unavailable``, ``transient``     ``slack_<error>``
``request_timeout``, ``team_added_to_org``,
``org_login_required``, webhook ``rollup_error`` (500)
other non-2xx without a Slack error string                   by HTTP status    ``http_<status>``
2xx that is not Slack's JSON (token mode)                    ``transient``     ``invalid_response``
===========================================================  ================  ===================

The webhook URL and the token are never formatted into a message; when Slack or the transport
echoes them, the orchestrator masks them (``SlackConfig.secrets`` names the URL, its path and its
token segment).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import httpx
from pydantic import SecretStr, field_validator, model_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    api_base_setting,
    check_http_setting,
    stripped_setting,
)
from app.channels.http_errors import (
    answer_failure,
    classify_status,
    failure_from_response,
    json_object,
    post_once,
)
from app.channels.text import ELLIPSIS, cut_short

TEXT_LIMIT = 40_000
"""Slack truncates ``text`` past this many characters; Herald cuts it first, with an ellipsis."""

_ERROR_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}")

_CLASSES: dict[str, ErrorClass] = {
    # The credential or the app's installation is broken: every message would fail alike.
    **dict.fromkeys(
        (
            "invalid_auth",
            "not_authed",
            "token_revoked",
            "token_expired",
            "account_inactive",
            "missing_scope",
            "no_permission",
            "not_allowed_token_type",
            "ekm_access_denied",
            "access_denied",
            "enterprise_is_restricted",
            "two_factor_setup_required",
            # incoming webhooks (docs.slack.dev, "Sending messages using incoming webhooks")
            "no_service",
            "no_active_hooks",
            "no_service_id",
            "no_team",
            "team_disabled",
            "invalid_token",
            "action_prohibited",
            "posting_to_general_channel_denied",
        ),
        ErrorClass.CONFIG,
    ),
    **dict.fromkeys(("ratelimited", "rate_limited"), ErrorClass.RATE_LIMITED),
    **dict.fromkeys(
        (
            "fatal_error",
            "internal_error",
            "service_unavailable",
            "request_timeout",
            "team_added_to_org",
            "org_login_required",
            "rollup_error",
        ),
        ErrorClass.TRANSIENT,
    ),
}
"""Slack error strings whose class is not ``permanent`` (the default for a named error)."""

_DESCRIPTIONS: dict[str, str] = {
    "channel_not_found": "the channel does not exist or the app cannot see it",
    "not_in_channel": "the app is not a member of the channel",
    "is_archived": "the channel is archived",
    "channel_is_archived": "the channel is archived",
    "msg_too_long": "the message is too long",
    "no_text": "the message has no text",
    "invalid_payload": "Slack could not read the request",
    "invalid_auth": "the token is not valid",
    "not_authed": "no token was sent",
    "token_revoked": "the token was revoked or the app removed",
    "token_expired": "the token has expired",
    "account_inactive": "the token belongs to a deleted user or workspace",
    "missing_scope": "the token lacks the chat:write scope",
    "no_service": "the incoming webhook was disabled or removed",
    "no_active_hooks": "the incoming webhook is disabled",
    "invalid_token": "the incoming webhook's token is not valid",
    "action_prohibited": "a workspace restriction forbids this webhook to post",
    "ratelimited": "Slack rate-limited the app",
    "rate_limited": "Slack rate-limited the app",
    "rollup_error": "Slack had an internal error",
}


def escape(text: str) -> str:
    """``text`` with Slack's three control characters as HTML entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, never inside an ``&...;`` entity."""
    if len(text) <= limit:
        return text
    kept = cut_short(text, limit).removesuffix(ELLIPSIS)
    amp = kept.find("&", max(0, len(kept) - 4))
    if amp != -1 and ";" not in kept[amp:]:
        kept = kept[:amp]  # the entity would be cut in two: drop it whole
    return kept + ELLIPSIS


def compose(message: Message) -> str:
    """The ``text`` Slack gets: ``*subject*`` on the first line, then the body, escaped."""
    lines = []
    subject = " ".join((message.subject or "").split())
    if subject:
        lines.append(f"*{escape(subject)}*")
    body = message.plain_text().strip()
    if body:
        lines.append(escape(body))
    return truncate("\n".join(lines))


def formatted(message: Message) -> tuple[str, list[Any] | None]:
    """The ``text`` and ``blocks`` Slack gets. A template's ``slack`` override gives them as
    written, already ``mrkdwn`` (what it inserted was escaped when it was rendered), the
    ``text`` cut as ``compose`` cuts it; blocks without a text come with the composed text,
    which Slack shows in notifications. Otherwise the composed text alone."""
    override = message.overrides.get(SlackChannel.type_name) or {}
    blocks = override.get("blocks")
    written = override.get("text")
    text = truncate(written) if isinstance(written, str) else compose(message)
    return text, list(blocks) if isinstance(blocks, list) else None


def _url_secrets(url: str) -> list[str]:
    """The URL, its path and its last path segment (the token part of a webhook URL)."""
    parsed = httpx.URL(url)
    found = [url, parsed.path]
    last = parsed.path.rstrip("/").rsplit("/", 1)[-1]
    if len(last) >= 8:
        found.append(last)
    return [s for s in found if s and s != "/"]


class SlackConfig(ChannelConfig):
    """Settings of a ``slack`` channel: ``webhook_url``, or ``token`` and ``channel``."""

    type: Literal["slack"]
    webhook_url: SecretStr | None = None
    """Incoming webhook URL (``https://hooks.slack.com/services/...``); the whole URL is secret."""
    token: SecretStr | None = None
    """Bot token (``xoxb-...``) with the ``chat:write`` scope, for ``chat.postMessage``."""
    channel: str | None = None
    """Channel ID (``C0123456789``) or name to post to; token mode only."""
    api_base: str = "https://slack.com/api"
    """Web API base URL (token mode)."""

    @field_validator("api_base")
    @classmethod
    def _valid_api_base(cls, value: str) -> str:
        return api_base_setting(value)

    @field_validator("webhook_url")
    @classmethod
    def _valid_webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        return SecretStr(check_http_setting(value.get_secret_value(), "webhook_url"))

    @field_validator("token")
    @classmethod
    def _valid_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            token = value.get_secret_value().strip()
            if not token:
                raise ValueError("token is empty (is its environment variable set?)")
            if any(ch.isspace() for ch in token):
                raise ValueError("token must not contain whitespace")
            value = SecretStr(token)
        return value

    @field_validator("channel")
    @classmethod
    def _valid_channel(cls, value: str | None) -> str | None:
        return None if value is None else stripped_setting(value, "channel is empty")

    @model_validator(mode="after")
    def _one_mode(self) -> SlackConfig:
        if self.webhook_url is not None and self.token is not None:
            raise ValueError("set either webhook_url or token (with channel), not both")
        if self.webhook_url is None and self.token is None:
            raise ValueError("set webhook_url (incoming webhook) or token and channel (bot)")
        if self.token is not None and self.channel is None:
            raise ValueError("token needs channel: the channel ID to post to")
        if self.webhook_url is not None and self.channel is not None:
            raise ValueError(
                "channel applies to token mode only; an incoming webhook posts to the channel "
                "it was created for"
            )
        return self

    @property
    def mode(self) -> Literal["webhook", "token"]:
        return "webhook" if self.webhook_url is not None else "token"

    def secrets(self) -> list[str]:
        found = super().secrets()
        if self.webhook_url is not None:
            found.extend(_url_secrets(self.webhook_url.get_secret_value()))
        return found


class SlackChannel(ChannelType):
    type_name = "slack"
    config_model = SlackConfig
    config: SlackConfig

    def readiness(self) -> str | None:
        if self.config.webhook_url is None and (
            self.config.token is None or not self.config.channel
        ):
            return "no webhook_url, and no token and channel to post with"
        return None

    async def send(self, message: Message) -> DeliveryResult:
        text, blocks = formatted(message)
        if self.config.webhook_url is not None:
            url = self.config.webhook_url.get_secret_value()
            payload: dict[str, Any] = {"text": text}
            headers = {"content-type": "application/json; charset=utf-8"}
        else:
            assert self.config.token is not None
            url = f"{self.config.api_base}/chat.postMessage"
            payload = {"channel": self.config.channel, "text": text}
            headers = {
                "content-type": "application/json; charset=utf-8",
                "authorization": f"Bearer {self.config.token.get_secret_value()}",
            }
        if blocks is not None:
            payload["blocks"] = blocks
        response = await post_once(
            self.context.http,
            url,
            content=json.dumps(payload, ensure_ascii=False).encode(),
            headers=headers,
            timeout=self.config.timeout,
        )
        if isinstance(response, DeliveryResult):
            return response
        if self.config.mode == "webhook":
            return self._webhook_result(response)
        return self._api_result(response)

    def _webhook_result(self, response: httpx.Response) -> DeliveryResult:
        if response.is_success:
            return DeliveryResult.ok(
                provider_status=response.status_code, response_excerpt=response.text
            )
        body = response.text.strip()
        error = body if _ERROR_TOKEN.fullmatch(body) else None
        return _failure(response, error)

    def _api_result(self, response: httpx.Response) -> DeliveryResult:
        body = json_object(response)
        if body is None or not isinstance(body.get("ok"), bool):
            if response.is_success:
                return DeliveryResult.failed(
                    ErrorClass.TRANSIENT,
                    "invalid_response",
                    f"HTTP {response.status_code} without Slack's JSON answer",
                    provider_status=response.status_code,
                    response_excerpt=response.text,
                )
            return failure_from_response(response)
        if body["ok"] and response.is_success:
            ts = body.get("ts")
            return DeliveryResult.ok(
                provider_status=response.status_code,
                provider_message_id=str(ts) if ts is not None else None,
                response_excerpt=response.text,
            )
        error = body.get("error")
        if not isinstance(error, str) or not error:
            return (
                failure_from_response(response)
                if not response.is_success
                else _failure(response, "unknown_error")
            )
        return _failure(response, error)


def _code_for(error: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_]+", "_", error.strip().lower()).strip("_")[:64]
    return f"slack_{cleaned or 'unknown_error'}"


def _failure(response: httpx.Response, error: str | None) -> DeliveryResult:
    """The failure for a Slack answer that named ``error`` (or named nothing, when None)."""
    status = response.status_code
    if error is None:
        return failure_from_response(response)
    if status == 429:
        error_class = ErrorClass.RATE_LIMITED
    elif error in _CLASSES:
        error_class = _CLASSES[error]
    elif response.is_success:
        error_class = ErrorClass.PERMANENT
    else:
        error_class = classify_status(status) or ErrorClass.PERMANENT
    code = _code_for(error)
    description = _DESCRIPTIONS.get(error)
    text = f"Slack error {code.removeprefix('slack_')} (HTTP {status})"
    if description:
        text += f": {description}"
    return answer_failure(response, error_class, code, text)

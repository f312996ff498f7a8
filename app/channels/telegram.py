"""``telegram``: a message through the Telegram Bot API (``sendMessage``).

``POST {api_base}/bot{token}/sendMessage`` with a JSON body ``{chat_id, text, parse_mode?,
disable_web_page_preview?}``; the answer is ``{"ok": true, "result": Message}`` or ``{"ok": false,
"error_code": N, "description": "...", "parameters": {"retry_after": N, "migrate_to_chat_id":
N}}`` (https://core.telegram.org/bots/api#making-requests, #responseparameters, #sendmessage).

Body (``app.channels.telegram_html``). A notification with ``html`` goes out with
``parse_mode: "HTML"`` after ``telegram_html`` has cut it down to Telegram's HTML subset; one
without goes out as plain ``text`` with no parse mode. A subject becomes the first line (bold in
HTML mode).

Length. ``text`` may hold 1-4096 characters after entity parsing. Longer bodies are sent as several
messages, in order. Plain text is cut with ``split_text`` on line boundaries. HTML is cut only
between *top-level lines* (a newline outside every tag), so each part is well-formed on its own;
when one top-level line is itself too long (a huge ``<pre>``, a long paragraph in ``<b>``), the
whole message falls back to plain text (the notification's ``text``, else the HTML's text) cut by
``split_text``. Lengths are counted in UTF-16 code units, which is never less than Telegram's own
count, so no part is refused as too long. Every part must be accepted; a failure on part k stops
there and reports that failure ("part k of n"). The recorded ``provider_message_id`` is every
accepted part's ``message_id``, joined by commas (the first one alone for a one-part message). A
later round starts again from part 1, so a multi-part message that failed half-way may repeat its
first parts.

Acknowledgements. When the route waits for one (``Message.acks``: ``strategy: escalate``), the
last part carries an inline keyboard with one button, "Acknowledge", whose ``callback_data`` is
``ack:<notification id>`` (``ack_callback_data``; 40 bytes, within Telegram's 64). Telegram
hands the press to the bot as a ``callback_query`` (read by the channel's inbound loop).

Secrets. The bot token is part of the URL path. It is a secret setting, so the orchestrator masks
it wherever an answer or a transport error echoes it (``redact_result``). httpx's client logs each
request URL at INFO (Herald's own sends pass its client by, see outbound.py) and aiohttp's client
logs through loggers of its own (http_pool.py sends over it); Herald keeps them at WARNING, and
while a channel is alive a filter on those loggers masks its token as well.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    api_base_setting,
    distinct_setting,
    redact_result,
    stripped_setting,
)
from app.channels.http_errors import (
    classify_status,
    failure_from_response,
    failure_from_transport,
    json_object,
    retry_after_seconds,
)
from app.channels.telegram_html import Part, message_parts
from app.channels.text import clip, send_in_parts
from app.security.redaction import MASK

MAX_DESCRIPTION = 500
"""How much of an error ``description`` goes into an attempt's message."""

_TOKEN = re.compile(r"^[0-9]+:[A-Za-z0-9_-]+$")
_CHAT_ID = re.compile(r"-?[0-9]{1,20}")
MAX_ALLOWED_CHATS = 100


def _chat_id_setting(value: object) -> str:
    """A numeric chat id, from YAML's integer or a string of one."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _CHAT_ID.fullmatch(value.strip()):
        raise ValueError(
            "a chat id is the chat's number, such as -1001234567890 (a group) or 123456789 "
            "(a person); @names are not accepted"
        )
    return value.strip()


ChatId = Annotated[str, BeforeValidator(_chat_id_setting)]


class TelegramInbound(BaseModel):
    """``inbound``: what the bot receives (README, "Telegram inbound")."""

    model_config = ConfigDict(extra="forbid")

    allowed_chats: list[ChatId] = Field(min_length=1, max_length=MAX_ALLOWED_CHATS)
    """The chats whose commands Herald carries out; anything from any other chat is stored,
    counted and left unanswered."""
    mode: Literal["poll"] = "poll"
    """``poll``: a long-polling ``getUpdates`` loop (the only mode: no public URL needed)."""

    @field_validator("allowed_chats")
    @classmethod
    def _distinct(cls, chats: list[str]) -> list[str]:
        return distinct_setting(chats, "chat")


class TelegramConfig(ChannelConfig):
    # The token must not be echoed back in a validation error (pydantic shows the input).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["telegram"]
    token: SecretStr
    """The bot token from @BotFather, ``123456:ABC-DEF…``."""
    default_chat_id: str | None = None
    """Where to send when the recipient has no ``telegram_chat_id``."""
    disable_web_page_preview: bool = True
    api_base: str = "https://api.telegram.org"
    """A self-hosted Bot API server or a test double; no trailing slash is kept."""
    inbound: TelegramInbound | None = None
    """Receive commands from these chats (``getUpdates``); none: the bot only sends."""

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        # The token goes into the URL path: a '/', '?', '#' or space would change the URL.
        if not _TOKEN.match(value.get_secret_value()):
            raise ValueError("token must look like 123456789:AAE… (digits, ':', letters/-/_)")
        return value

    @field_validator("default_chat_id")
    @classmethod
    def _chat_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return stripped_setting(value, "default_chat_id must not be empty")

    @field_validator("api_base")
    @classmethod
    def _valid_api_base(cls, value: str) -> str:
        return api_base_setting(value)


# -- keeping the token out of httpx's log lines ---------------------------------------------------


class _TokenFilter(logging.Filter):
    """Masks registered bot tokens in the records of the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        tokens = [token for token, count in self.tokens.items() if count > 0]
        if tokens:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record is logging's problem, not ours to raise
                return True
            masked = message
            for token in tokens:
                masked = masked.replace(token, MASK)
            if masked != message:
                record.msg, record.args = masked, None
        return True


_LOG_FILTER = _TokenFilter()
_FILTERED_LOGGERS = ("httpx", "aiohttp.client", "aiohttp.internal")
"""httpx logs each request URL at INFO; aiohttp's client logs through the other two. A filter on
a logger does not apply to its children, so each logger these libraries log through is named."""


def _watch_token(token: str) -> None:
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
    _LOG_FILTER.tokens[token] += 1


def _unwatch_token(token: str) -> None:
    _LOG_FILTER.tokens[token] -= 1
    if _LOG_FILTER.tokens[token] <= 0:
        del _LOG_FILTER.tokens[token]


# -- answers ------------------------------------------------------------------------------------


def _body(response: httpx.Response) -> dict[str, Any] | None:
    """Telegram's JSON answer, or ``None`` when the body is not one."""
    data = json_object(response)
    return data if data is not None and isinstance(data.get("ok"), bool) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


_FORBIDDEN_CODES = (
    ("blocked by the user", "telegram_bot_blocked"),
    ("kicked", "telegram_bot_kicked"),
    ("user is deactivated", "telegram_user_deactivated"),
)
_BAD_REQUEST_CODES = (
    ("chat not found", "telegram_chat_not_found"),
    ("can't parse entities", "telegram_cant_parse_entities"),
    ("message is too long", "telegram_message_too_long"),
)


def _failure(response: httpx.Response) -> DeliveryResult | None:
    """What went wrong, when the answer is not ``{"ok": true, …}``; ``None`` when it is."""
    body = _body(response)
    if response.is_success and body is None:
        return DeliveryResult.failed(
            ErrorClass.CONFIG,
            "telegram_invalid_response",
            f"HTTP {response.status_code} but not a Bot API answer: is api_base right?",
            provider_status=response.status_code,
            response_excerpt=response.text,
        )
    if not response.is_success or body is None or body.get("ok") is not True:
        return failure_from_answer(response)
    return None


def _result(response: httpx.Response) -> Any:
    """The ``result`` of an answer ``_failure`` found no fault with."""
    body = _body(response)
    return body.get("result") if body is not None else None


class BotApiError(Exception):
    """A Bot API call that failed, with the failure as a send would record it."""

    def __init__(self, method: str, failure: DeliveryResult) -> None:
        assert failure.error is not None
        self.method = method
        self.failure = failure
        self.error = failure.error
        super().__init__(f"{method}: {failure.error.message} ({failure.error.code})")


def failure_from_answer(response: httpx.Response) -> DeliveryResult:
    """The error class and a stable code for a Bot API error answer."""
    status = response.status_code
    body = _body(response)
    if body is None:
        if status == 404:
            return DeliveryResult.failed(
                ErrorClass.CONFIG,
                "telegram_not_found",
                "HTTP 404 without a Bot API answer: is api_base a Bot API server?",
                provider_status=status,
                response_excerpt=response.text,
            )
        return failure_from_response(response)
    error_code = _int(body.get("error_code")) or status
    description = clip(str(body.get("description") or "").strip(), MAX_DESCRIPTION)
    lowered = description.lower()
    raw_parameters = body.get("parameters")
    parameters: dict[str, Any] = raw_parameters if isinstance(raw_parameters, dict) else {}
    retry_after = _int(parameters.get("retry_after"))
    migrate_to = _int(parameters.get("migrate_to_chat_id"))
    said = f"{description or 'no description'} (error_code {error_code})"

    def failed(
        error_class: ErrorClass, code: str, message: str, wait: float | None = None
    ) -> DeliveryResult:
        return DeliveryResult.failed(
            error_class,
            code,
            message,
            provider_status=status,
            response_excerpt=response.text,
            retry_after=wait,
        )

    if error_code == 429 or retry_after is not None:
        wait = float(retry_after) if retry_after is not None else None
        if wait is None:
            wait = retry_after_seconds(response.headers.get("retry-after"))
        return failed(ErrorClass.RATE_LIMITED, "http_429", said, wait)
    if migrate_to is not None:
        return failed(
            ErrorClass.PERMANENT,
            "telegram_chat_migrated",
            f"the group was upgraded to a supergroup; its new chat id is {migrate_to}: "
            f"send to {migrate_to} instead ({said})",
        )
    if error_code == 401:
        return failed(ErrorClass.CONFIG, "telegram_unauthorized", f"bot token refused: {said}")
    if error_code == 404:
        return failed(
            ErrorClass.CONFIG,
            "telegram_not_found",
            f"bot token malformed or api_base wrong: {said}",
        )
    if error_code == 403:
        code = next((c for needle, c in _FORBIDDEN_CODES if needle in lowered), None)
        return failed(ErrorClass.PERMANENT, code or "telegram_forbidden", said)
    if error_code == 400:
        code = next((c for needle, c in _BAD_REQUEST_CODES if needle in lowered), None)
        return failed(ErrorClass.PERMANENT, code or "telegram_bad_request", said)
    error_class = classify_status(error_code) or classify_status(status) or ErrorClass.PERMANENT
    return failed(error_class, f"http_{error_code}", said)


# -- the acknowledge button ---------------------------------------------------------------------

ACK_PREFIX = "ack:"
ACK_BUTTON = "Acknowledge"


def ack_callback_data(notification_id: uuid.UUID) -> str:
    """The ``callback_data`` of a message's Acknowledge button."""
    return f"{ACK_PREFIX}{notification_id}"


def acked_by_callback(data: str) -> uuid.UUID | None:
    """The notification an Acknowledge button's ``callback_data`` names (``None``: not one)."""
    if not data.startswith(ACK_PREFIX):
        return None
    try:
        return uuid.UUID(data.removeprefix(ACK_PREFIX))
    except ValueError:
        return None


def ack_keyboard(notification_id: uuid.UUID) -> dict[str, Any]:
    """``reply_markup``: an inline keyboard with the one Acknowledge button."""
    button = {"text": ACK_BUTTON, "callback_data": ack_callback_data(notification_id)}
    return {"inline_keyboard": [[button]]}


# -- the channel --------------------------------------------------------------------------------


class TelegramChannel(ChannelType):
    type_name = "telegram"
    config_model = TelegramConfig
    config: TelegramConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._token = self.config.token.get_secret_value()
        self._url = self._method_url("sendMessage")
        _watch_token(self._token)
        self._watching = True

    def _method_url(self, method: str) -> str:
        return f"{self.config.api_base}/bot{self._token}/{method}"

    async def call(
        self,
        method: str,
        payload: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 (the HTTP request's, as Outbound.post takes it)
    ) -> Any:
        """One Bot API method (``getUpdates``, ``sendMessage``…): its answer's ``result``.

        A failure raises ``BotApiError`` carrying it as a send would record it (class, code,
        message, ``retry_after``), the token masked."""
        try:
            response = await self.context.http.post(
                self._method_url(method), json=payload, timeout=timeout
            )
        except httpx.InvalidURL:
            raise BotApiError(
                method,
                DeliveryResult.failed(
                    ErrorClass.CONFIG, "invalid_url", "api_base and token do not make a valid URL"
                ),
            ) from None
        except httpx.HTTPError as exc:
            failed = failure_from_transport(exc)
            raise BotApiError(method, redact_result(failed, self.secrets())) from None
        failure = _failure(response)
        if failure is not None:
            raise BotApiError(method, redact_result(failure, self.secrets()))
        return _result(response)

    async def aclose(self) -> None:
        if self._watching:
            self._watching = False
            _unwatch_token(self._token)

    async def send(self, message: Message) -> DeliveryResult:
        chat_id = message.recipient.telegram_chat_id or self.config.default_chat_id
        if not chat_id:
            return DeliveryResult.skipped(
                "no_address", "recipient has no telegram_chat_id and no default_chat_id is set"
            )
        parts = message_parts(message)
        if not parts:
            return DeliveryResult.failed(
                ErrorClass.PERMANENT, "empty_message", "nothing to send: the message is empty"
            )
        deadline = time.monotonic() + self.config.timeout
        keyboard = ack_keyboard(message.id) if message.acks else None
        return await send_in_parts(
            parts,
            lambda number, part: self._send_part(
                chat_id, part, deadline, keyboard if number == len(parts) else None
            ),
        )

    async def _send_part(
        self, chat_id: str, part: Part, deadline: float, keyboard: dict[str, Any] | None = None
    ) -> DeliveryResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT, "timeout", f"no time left within {self.config.timeout:g}s"
            )
        payload: dict[str, Any] = {"chat_id": chat_id, "text": part.text}
        if part.parse_mode:
            payload["parse_mode"] = part.parse_mode
        if self.config.disable_web_page_preview:
            payload["disable_web_page_preview"] = True
        if keyboard is not None:
            payload["reply_markup"] = keyboard
        try:
            response = await self.context.http.post(self._url, json=payload, timeout=remaining)
        except httpx.InvalidURL:
            # Not an httpx.HTTPError; its text may quote the URL, so none of it is kept.
            return DeliveryResult.failed(
                ErrorClass.CONFIG, "invalid_url", "api_base and token do not make a valid URL"
            )
        except httpx.HTTPError as exc:
            return failure_from_transport(exc)
        return self._read(response)

    def _read(self, response: httpx.Response) -> DeliveryResult:
        failure = _failure(response)
        if failure is not None:
            return failure
        result = _result(response)
        message_id = _int(result.get("message_id")) if isinstance(result, dict) else None
        return DeliveryResult.ok(
            provider_status=response.status_code,
            provider_message_id=str(message_id) if message_id is not None else None,
            response_excerpt=response.text,
        )

"""``telegram``: a message through the Telegram Bot API (``sendMessage``).

``POST {api_base}/bot{token}/sendMessage`` with a JSON body ``{chat_id, text, parse_mode?,
disable_web_page_preview?}``; the answer is ``{"ok": true, "result": Message}`` or ``{"ok": false,
"error_code": N, "description": "...", "parameters": {"retry_after": N, "migrate_to_chat_id":
N}}`` (https://core.telegram.org/bots/api#making-requests, #responseparameters, #sendmessage).

Body. A notification with ``html`` goes out with ``parse_mode: "HTML"`` after ``telegram_html``
has cut it down to Telegram's HTML subset; one without goes out as plain ``text`` with no parse
mode. A subject becomes the first line (bold in HTML mode).

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

Secrets. The bot token is part of the URL path. It never appears in a result: every message and
excerpt this channel returns has it masked, transport errors included. httpcore logs response
headers at DEBUG (a header may echo the URL), and httpx's client logs each request URL at INFO
(Herald's own sends pass its client by, see outbound.py); Herald keeps both loggers at WARNING,
and while a channel is alive a filter on those loggers masks its token as well.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import ConfigDict, SecretStr, field_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    excerpt,
)
from app.channels.http_errors import (
    classify_status,
    failure_from_response,
    failure_from_transport,
    json_object,
    retry_after_seconds,
)
from app.channels.text import split_text
from app.security.redaction import MASK

MAX_TEXT = 4096
"""Telegram's limit on ``text`` after entity parsing (sendMessage)."""
MAX_DESCRIPTION = 500
"""How much of an error ``description`` goes into an attempt's message."""

_TOKEN = re.compile(r"^[0-9]+:[A-Za-z0-9_-]+$")


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
        if value is not None:
            value = value.strip()
            if not value:
                raise ValueError("default_chat_id must not be empty")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_base must start with http:// or https://")
        try:
            host = httpx.URL(value).host
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise ValueError(f"api_base is not a valid URL ({exc})") from None
        if not host:
            raise ValueError("api_base must name a host")
        return value.rstrip("/")


# -- Telegram's HTML subset ---------------------------------------------------------------------

_KINDS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strike",
    "strike": "strike",
    "del": "strike",
    "tg-spoiler": "spoiler",
    "span": "spoiler",  # only with class="tg-spoiler"
    "a": "link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}
_FORMATTING = frozenset({"bold", "italic", "underline", "strike", "spoiler"})
_LINK_SCHEMES = frozenset({"http", "https", "tg", "mailto"})
_VOID = frozenset(
    {"area", "base", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
_BLOCKS = frozenset(
    {"p", "div", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr"}
)
_SPACES = re.compile(r"[ \t\r\n\f\v]+")


@dataclass
class _Token:
    kind: Literal["open", "close", "text", "newline"]
    value: str = ""
    keep_spaces: bool = False


@dataclass(frozen=True)
class TelegramHtml:
    """Sanitized HTML as top-level lines: ``(markup, visible text)`` for each."""

    lines: tuple[tuple[str, str], ...]

    @property
    def html(self) -> str:
        return "\n".join(markup for markup, _ in self.lines)

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


@dataclass
class _Open:
    tag: str
    kind: str | None
    """What the tag became; ``None``: dropped (its text is kept)."""
    close: str = ""


class _Sanitizer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[_Token] = []
        self.stack: list[_Open] = []
        self.skip = 0
        self.at_line_start = True

    def _newline(self) -> None:
        self.tokens.append(_Token("newline"))
        self.at_line_start = True

    def _kinds(self) -> list[str]:
        return [entry.kind for entry in self.stack if entry.kind]

    def _allowed(self, kind: str) -> bool:
        """Telegram's nesting rules (Bot API, "Formatting options"): bold, italic, underline,
        strikethrough and spoiler nest in anything but code and pre, and hold anything but code
        and pre; code may sit directly in pre; blockquotes do not nest; links do not nest."""
        open_kinds = self._kinds()
        if "code" in open_kinds or "pre" in open_kinds:
            return kind == "code" and open_kinds[-1] == "pre"
        if kind in _FORMATTING:
            return True
        if kind == "link":
            return "link" not in open_kinds
        if kind == "blockquote":
            return not open_kinds
        # code and pre: at the top level or directly in a blockquote
        return all(open_kind == "blockquote" for open_kind in open_kinds)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.skip += 1
            return
        if self.skip:
            return
        if tag == "br":
            self._newline()
            return
        if tag in ("td", "th") and not self.at_line_start:
            self.tokens.append(_Token("text", " "))
            return
        if tag in _BLOCKS:
            if not self.at_line_start:
                self._newline()
            if tag == "li":
                self.tokens.append(_Token("text", "• "))
            return
        if tag in _VOID:
            return
        kind = _KINDS.get(tag)
        markup = f"<{tag}>"
        if kind == "spoiler" and tag == "span":
            classes = (dict(attrs).get("class") or "").split()
            kind = "spoiler" if "tg-spoiler" in classes else None
            markup = '<span class="tg-spoiler">'
        elif kind == "link":
            href = _safe_href(dict(attrs).get("href"))
            kind = "link" if href else None
            markup = f'<a href="{html.escape(href or "", quote=True)}">'
        if kind is not None and not self._allowed(kind):
            kind = None
        entry = _Open(tag, kind, f"</{tag}>")
        self.stack.append(entry)
        if kind is not None:
            self.tokens.append(_Token("open", markup))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
            return
        if self.skip or tag == "br" or tag in _VOID:
            return
        if tag in _BLOCKS:
            if not self.at_line_start:
                self._newline()
            return
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index].tag == tag:
                while len(self.stack) > index:
                    self._pop()
                return
        # An end tag that closes nothing open is dropped.

    def _pop(self) -> None:
        entry = self.stack.pop()
        if entry.kind is not None:
            self.tokens.append(_Token("close", entry.close))

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        keep_spaces = "pre" in self._kinds()
        if not keep_spaces:
            data = _SPACES.sub(" ", data)
            if self.at_line_start:
                data = data.lstrip(" ")
            if not data:
                return
        self.tokens.append(_Token("text", data, keep_spaces))
        if data.strip():
            self.at_line_start = False

    def finish(self) -> list[_Token]:
        self.close()
        while self.stack:
            self._pop()
        return self.tokens


def _safe_href(href: str | None) -> str | None:
    if not href:
        return None
    href = href.strip()
    if any(ord(char) < 0x20 or char.isspace() for char in href):
        return None
    try:
        scheme = urlsplit(href).scheme.lower()
    except ValueError:
        return None
    return href if scheme in _LINK_SCHEMES else None


def _lines(tokens: list[_Token]) -> TelegramHtml:
    """Group tokens into top-level lines and render each; blank runs become one blank line."""
    raw_lines: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "newline":
            if depth == 0:
                raw_lines.append([])
            else:
                raw_lines[-1].append(_Token("text", "\n", keep_spaces=True))
            continue
        depth += {"open": 1, "close": -1}.get(token.kind, 0)
        raw_lines[-1].append(token)

    rendered: list[tuple[str, str]] = []
    for line in raw_lines:
        _trim(line, range(len(line)), str.lstrip)
        _trim(line, range(len(line) - 1, -1, -1), str.rstrip)
        text = "".join(t.value for t in line if t.kind == "text")
        if not text.strip():
            if rendered and rendered[-1][1]:
                rendered.append(("", ""))
            continue
        markup = "".join(
            html.escape(t.value, quote=False) if t.kind == "text" else t.value for t in line
        )
        rendered.append((markup, text))
    while rendered and not rendered[-1][1]:
        rendered.pop()
    return TelegramHtml(tuple(rendered))


def _trim(line: list[_Token], order: range, strip: Any) -> None:
    """Strip collapsible spaces at one end of a line, up to its first visible character."""
    for index in order:
        token = line[index]
        if token.kind != "text":
            continue
        if token.keep_spaces:
            return
        token.value = strip(token.value, " ")
        if token.value:
            return


def telegram_html(markup: str, subject: str | None = None) -> TelegramHtml:
    """``markup`` cut down to what Telegram's ``parse_mode: "HTML"`` accepts.

    Kept: b/strong, i/em, u/ins, s/strike/del, tg-spoiler, span class="tg-spoiler", a (``href``
    only, http/https/tg/mailto only), code, pre, blockquote; every attribute but ``href`` goes. Any
    other tag is dropped and its text kept (script and style lose their text too); ``<br>`` and
    block ends (``</p>``, ``</div>``, ``</li>``, …) become newlines; ``<, >, &`` in text are
    escaped. Whitespace outside ``<pre>`` collapses as a browser would. Tags Telegram would refuse
    to nest lose their markup, unclosed tags are closed and stray end tags dropped, so the result
    is always well-formed. ``subject`` becomes a bold first line.
    """
    parser = _Sanitizer()
    parser.feed(markup)
    tokens = parser.finish()
    if subject is not None and subject.strip():
        head = [
            _Token("open", "<b>"),
            _Token("text", _SPACES.sub(" ", subject).strip()),
            _Token("close", "</b>"),
            _Token("newline"),
        ]
        tokens = head + tokens
    return _lines(tokens)


# -- lengths and parts --------------------------------------------------------------------------


def telegram_length(text: str) -> int:
    """``text``'s length in UTF-16 code units (at least Telegram's count for any text)."""
    return len(text.encode("utf-16-le")) // 2


def split_plain(text: str, limit: int = MAX_TEXT) -> list[str]:
    """``split_text`` whose parts also fit ``limit`` in UTF-16 code units."""
    parts: list[str] = []
    for part in split_text(text, limit):
        if telegram_length(part) <= limit:
            parts.append(part)
        else:  # astral characters count twice: half the limit in code points always fits
            parts.extend(split_text(part, max(1, limit // 2)))
    return parts


def split_html(rendered: TelegramHtml, limit: int = MAX_TEXT) -> list[str] | None:
    """Parts of at most ``limit`` visible characters, cut between top-level lines only.

    ``None`` when one top-level line is longer than ``limit`` by itself.
    """
    parts: list[str] = []
    markup: list[str] = []
    size = 0
    for line_markup, line_text in rendered.lines:
        length = telegram_length(line_text)
        if length > limit:
            return None
        if markup and size + 1 + length > limit:
            parts.append("\n".join(markup).strip("\n"))
            markup, size = [], 0
            if not line_text:
                continue  # a blank line at the top of a part shows as nothing
        size += length + (1 if markup else 0)
        markup.append(line_markup)
    if markup:
        parts.append("\n".join(markup).strip("\n"))
    return [part for part in parts if part]


@dataclass(frozen=True)
class Part:
    text: str
    parse_mode: str | None


def message_parts(message: Message, limit: int = MAX_TEXT) -> list[Part]:
    """What to send for ``message``, in order; empty when there is nothing visible to send."""
    if message.html is not None:
        rendered = telegram_html(message.html, message.subject)
        if rendered.text.strip():
            if telegram_length(rendered.text) <= limit:
                return [Part(rendered.html, "HTML")]
            parts = split_html(rendered, limit)
            if parts is not None:
                return [Part(part, "HTML") for part in parts]
    body = message.plain_text()
    if message.subject and message.subject.strip():
        body = f"{message.subject.strip()}\n{body}" if body.strip() else message.subject.strip()
    if not body.strip():
        return []
    return [Part(part, None) for part in split_plain(body, limit) if part.strip()]


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
_FILTERED_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
"""httpx logs each request URL at INFO; httpcore's DEBUG traces include response headers (a
``Location`` may echo the URL). A filter on a logger does not apply to its children, so each
logger these libraries log through is named."""


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


def failure_from_answer(
    response: httpx.Response, scrub: Callable[[str], str] = lambda text: text
) -> DeliveryResult:
    """The error class and a stable code for a Bot API error answer.

    ``scrub`` masks secrets in the description before it is shortened, so no cut can leave part
    of one behind.
    """
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
    description = scrub(str(body.get("description") or "").strip())
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION] + "…"
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
            response_excerpt=scrub(response.text),
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


# -- the channel --------------------------------------------------------------------------------


class TelegramChannel(ChannelType):
    type_name = "telegram"
    config_model = TelegramConfig
    config: TelegramConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._token = self.config.token.get_secret_value()
        self._url = f"{self.config.api_base}/bot{self._token}/sendMessage"
        _watch_token(self._token)
        self._watching = True

    async def aclose(self) -> None:
        if self._watching:
            self._watching = False
            _unwatch_token(self._token)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, MASK)

    def _clean(self, result: DeliveryResult, response: httpx.Response | None) -> DeliveryResult:
        """``result`` with the token masked wherever an answer or an exception could echo it.

        The excerpt is cut again from the masked whole body: masking an excerpt already cut at
        2 KiB could leave the first characters of a token that straddled the cut.
        """
        error = result.error
        if error is not None and self._token in error.message:
            result = replace(result, error=replace(error, message=self._scrub(error.message)))
        if response is not None and result.response_excerpt is not None:
            result = replace(result, response_excerpt=excerpt(self._scrub(response.text)))
        return result

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
        ids: list[str] = []
        first: DeliveryResult | None = None
        for number, part in enumerate(parts, start=1):
            result = await self._send_part(chat_id, part, deadline)
            if result.error is not None:
                if len(parts) > 1:
                    note = f" (part {number} of {len(parts)}"
                    if number == 2:
                        note += "; part 1 was delivered"
                    elif number > 2:
                        note += f"; parts 1-{number - 1} were delivered"
                    note += ")"
                    result = replace(
                        result,
                        error=replace(result.error, message=result.error.message + note),
                        provider_message_id=",".join(ids) or None,
                    )
                return result
            first = first or result
            if result.provider_message_id:
                ids.append(result.provider_message_id)
        assert first is not None
        return replace(first, provider_message_id=",".join(ids) or None)

    async def _send_part(self, chat_id: str, part: Part, deadline: float) -> DeliveryResult:
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
        try:
            response = await self.context.http.post(self._url, json=payload, timeout=remaining)
        except httpx.InvalidURL:
            # Not an httpx.HTTPError; its text may quote the URL, so none of it is kept.
            return DeliveryResult.failed(
                ErrorClass.CONFIG, "invalid_url", "api_base and token do not make a valid URL"
            )
        except httpx.HTTPError as exc:
            return self._clean(failure_from_transport(exc), None)
        return self._clean(self._read(response), response)

    def _read(self, response: httpx.Response) -> DeliveryResult:
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
            return failure_from_answer(response, self._scrub)
        result = body.get("result")
        message_id = _int(result.get("message_id")) if isinstance(result, dict) else None
        return DeliveryResult.ok(
            provider_status=response.status_code,
            provider_message_id=str(message_id) if message_id is not None else None,
            response_excerpt=response.text,
        )

"""Telegram's HTML subset: sanitizing a notification's HTML for ``parse_mode: "HTML"``, and
cutting a message into the parts ``sendMessage`` accepts.

Lengths are counted in UTF-16 code units, which is never less than Telegram's own count, so no
part is refused as too long. HTML is cut only between *top-level lines* (a newline outside every
tag), so each part is well-formed on its own; when one top-level line is itself too long, the
whole message falls back to plain text cut on line boundaries (``split_text``).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import urlsplit

from app.channels.base import Message
from app.channels.text import Unit, split_text, utf16_len

MAX_TEXT = 4096
"""Telegram's limit on ``text`` after entity parsing (sendMessage)."""

# -- the sanitizer ---------------------------------------------------------------------

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


def split_html(rendered: TelegramHtml, limit: int = MAX_TEXT) -> list[str] | None:
    """Parts of at most ``limit`` visible characters, cut between top-level lines only.

    ``None`` when one top-level line is longer than ``limit`` by itself.
    """
    parts: list[str] = []
    markup: list[str] = []
    size = 0
    for line_markup, line_text in rendered.lines:
        length = utf16_len(line_text)
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
            if utf16_len(rendered.text) <= limit:
                return [Part(rendered.html, "HTML")]
            parts = split_html(rendered, limit)
            if parts is not None:
                return [Part(part, "HTML") for part in parts]
    body = message.plain_text()
    if message.subject and message.subject.strip():
        body = f"{message.subject.strip()}\n{body}" if body.strip() else message.subject.strip()
    if not body.strip():
        return []
    return [Part(part, None) for part in split_text(body, limit, Unit.UTF16) if part.strip()]

"""Text helpers every channel shares: lengths, cuts, splits, HTML to text, multi-part sends.

A provider limits a body in characters (Slack, Discord), UTF-16 code units (Telegram, SMS) or
UTF-8 bytes (ntfy, an attempt's excerpt): ``Unit`` names the three, and ``measure``, ``prefix``,
``clip`` and ``split_text`` count in any of them. Every cut that is shown ends with ``ELLIPSIS``,
which redaction also relies on: a secret cut short just before it is masked as well.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from enum import Enum
from html.parser import HTMLParser
from typing import TYPE_CHECKING, TypeVar

from app.security.redaction import ELLIPSIS as ELLIPSIS  # every channel cuts with this one

if TYPE_CHECKING:
    from app.channels.base import DeliveryResult

_P = TypeVar("_P")


class Unit(Enum):
    """What a length limit counts, as the codec that makes each unit a fixed number of bytes."""

    CHARS = ("utf-32-le", 4)
    UTF16 = ("utf-16-le", 2)
    UTF8 = ("utf-8", 1)

    @property
    def codec(self) -> str:
        return str(self.value[0])

    @property
    def width(self) -> int:
        """Bytes per unit in ``codec``."""
        return int(self.value[1])


def measure(text: str, unit: Unit = Unit.CHARS) -> int:
    """``text``'s length in ``unit``."""
    if unit is Unit.CHARS:
        return len(text)
    return len(text.encode(unit.codec)) // unit.width


def utf16_len(text: str) -> int:
    """``text``'s length in UTF-16 code units: never less than a provider's character count."""
    return measure(text, Unit.UTF16)


def prefix(text: str, size: int, unit: Unit = Unit.CHARS) -> str:
    """The longest start of ``text`` that is at most ``size`` units, cut between characters."""
    if unit is Unit.CHARS:
        return text[: max(0, size)]
    raw = text.encode(unit.codec)[: max(0, size) * unit.width]
    return raw.decode(unit.codec, errors="ignore")


def clip(text: str, limit: int, unit: Unit = Unit.CHARS) -> str:
    """``text`` if it fits in ``limit`` units, else ``cut_short`` to fit."""
    return text if measure(text, unit) <= limit else cut_short(text, limit, unit)


def cut_short(text: str, limit: int, unit: Unit = Unit.CHARS) -> str:
    """``text`` marked as cut: its longest start that leaves room in ``limit`` units for the
    ``ELLIPSIS`` after it (spaces before the ellipsis dropped)."""
    return prefix(text, limit - measure(ELLIPSIS, unit), unit).rstrip() + ELLIPSIS


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with its whitespace runs as single spaces, clipped to ``limit`` characters."""
    return clip(" ".join(text.split()), limit)


_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"} and self._skip:
            self._skip -= 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def split_text(text: str, limit: int, unit: Unit = Unit.CHARS) -> list[str]:
    """``text`` in parts of at most ``limit`` units, cut on line boundaries.

    Lines are kept whole where they fit; a line longer than ``limit`` is cut at its last space
    before the limit, or hard at the limit when it has none. Parts keep their order; joining
    them with newlines gives back the text (less the newlines and spaces cut on). In a unit
    other than characters, a part too long in that unit is split again at the character count
    that always fits (a character is at most ``4 // width`` units).
    """
    parts: list[str] = []
    for part in _split_chars(text, limit):
        if measure(part, unit) <= limit:
            parts.append(part)
        else:
            parts.extend(_split_chars(part, max(1, limit // (4 // unit.width))))
    return parts


def _split_chars(text: str, limit: int) -> list[str]:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > limit:
            cut = line.rfind(" ", 0, limit + 1)
            cut = cut if cut > 0 else limit
            if current:
                parts.append(current)
                current = ""
            parts.append(line[:cut])
            line = line[cut:].lstrip(" ")
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) <= limit:
            current = candidate
        else:
            parts.append(current)
            current = line
    if current:
        parts.append(current)
    return parts


async def send_in_parts(
    parts: Sequence[_P], send_part: Callable[[int, _P], Awaitable[DeliveryResult]]
) -> DeliveryResult:
    """Send ``parts`` in order with ``send_part(number, part)`` (numbered from 1).

    Every part must be accepted: the first failure stops the send and is the result, its message
    saying which part failed and how many were delivered, its ``provider_message_id`` those of the
    parts delivered. On success the result is the first part's, with the message id of every part
    joined by commas.
    """
    ids: list[str] = []
    first: DeliveryResult | None = None
    for number, part in enumerate(parts, start=1):
        result = await send_part(number, part)
        if result.error is not None:
            if len(parts) > 1:
                note = f" (part {number} of {len(parts)}{_delivered_before(number)})"
                result = replace(
                    result,
                    error=replace(result.error, message=result.error.message + note),
                    provider_message_id=",".join(ids) or None,
                )
            return result
        first = first or result
        if result.provider_message_id:
            ids.append(result.provider_message_id)
    if first is None:
        raise ValueError("send_in_parts needs at least one part")
    return replace(first, provider_message_id=",".join(ids) or None)


def _delivered_before(number: int) -> str:
    if number == 1:
        return ""
    if number == 2:
        return "; part 1 was delivered"
    return f"; parts 1-{number - 1} were delivered"

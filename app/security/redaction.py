"""Keeping secrets out of attempts, logs and API responses."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
ELLIPSIS = "…"
"""Ends every text cut short for showing (``app.channels.text.clip``)."""
CUT_PIECE = 4
"""A secret's first characters, this many or more, just before an ellipsis are masked too."""

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
_AUTH_HEADER = re.compile(r"(?i)(authorization\s*[:=]\s*)(\w+\s+)?[^\s,;\"']+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret, URL credential and Authorization value masked; also
    the start of a secret that a cut (``ELLIPSIS``) left behind."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = _mask_cut(text.replace(secret, MASK), secret)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{MASK}", text)


def _mask_cut(text: str, secret: str) -> str:
    """``text`` with the start of ``secret`` masked where a cut left it before an ellipsis."""
    if ELLIPSIS not in text:
        return text
    pieces = text.split(ELLIPSIS)
    for index, piece in enumerate(pieces[:-1]):
        for size in range(min(len(secret) - 1, len(piece)), CUT_PIECE - 1, -1):
            if piece.endswith(secret[:size]):
                pieces[index] = piece[:-size] + MASK
                break
    return ELLIPSIS.join(pieces)

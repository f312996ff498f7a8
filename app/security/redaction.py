"""Keeping secrets out of attempts, logs and API responses."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
_AUTH_HEADER = re.compile(r"(?i)(authorization\s*[:=]\s*)(\w+\s+)?[^\s,;\"']+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret, URL credential and Authorization value masked."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{MASK}", text)

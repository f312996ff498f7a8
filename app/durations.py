"""Durations as the config file writes them: ``500ms``, ``5s``, ``2m``, ``1h``, ``1d``, seconds."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds for a duration; raises ``ValueError`` naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s, 2m, 1h, 1d or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use 500ms, 5s, 2m, 1h, 1d or a number of seconds"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for API output (``90s`` stays ``90s``)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000, 3):f}".rstrip("0").rstrip(".") + "ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""Seconds in Python; written as the config writes it (``10s``) wherever it is shown as JSON."""
